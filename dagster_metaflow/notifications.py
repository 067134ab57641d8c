"""What `create --notify-*` asks for (the options of Argo Workflows' create): one frozen
record shared by the compiler, which checks and bakes it, and the runtime, which sends."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SERVICES = ("slack", "pager_duty", "incident_io")
SERVICE_NAMES = {"slack": "Slack", "pager_duty": "PagerDuty", "incident_io": "incident.io"}
# each service's secret: the field (and option, without `notify_`) and what `create` calls it
SECRET_FIELDS = {
    "slack": "slack_webhook_url",
    "pager_duty": "pager_duty_integration_key",
    "incident_io": "incident_io_api_key",
}
SECRET_NAMES = {
    "slack": "Slack webhook URL",
    "pager_duty": "PagerDuty integration key",
    "incident_io": "incident.io API key",
}


@dataclass(frozen=True)
class Notifications:
    """Where and when a deployment's runs are announced. Secret values may be `env:NAME`:
    read from the environment of the process that sends (the run worker, the daemon)."""

    on_error: bool = False
    on_success: bool = False
    slack_webhook_url: str | None = None
    pager_duty_integration_key: str | None = None
    incident_io_api_key: str | None = None
    incident_io_alert_source_config_id: str | None = None
    incident_io_metadata: Mapping[str, str] = field(default_factory=dict)

    def secret_of(self, service: str) -> str | None:
        """The service's webhook URL or key, as given (a value, or `env:NAME`)."""
        value: str | None = getattr(self, SECRET_FIELDS[service])
        return value

    @property
    def services(self) -> tuple[str, ...]:
        """The services given, in SERVICES order."""
        return tuple(s for s in SERVICES if self.secret_of(s))

    @property
    def literal_secrets(self) -> tuple[str, ...]:
        """The services whose secret is given as a value, not `env:NAME`."""
        return tuple(s for s in self.services if not (self.secret_of(s) or "").startswith("env:"))

    def wanted(self, successful: bool) -> bool:
        return bool(self.services) and (self.on_success if successful else self.on_error)

    @property
    def outcomes(self) -> tuple[str, ...]:
        """The outcomes announced: "error" (a failed run), "success"."""
        return tuple(o for o, on in (("error", self.on_error), ("success", self.on_success)) if on)


def notify_sensor_name(job_name: str, outcome: str) -> str:
    """The run-status sensor announcing `outcome` ("error", "success") of the job's runs."""
    return f"{job_name}_notify_on_{outcome}"


def notifications_from_options(
    on_error: bool = False,
    on_success: bool = False,
    slack_webhook_url: str | None = None,
    pager_duty_integration_key: str | None = None,
    incident_io_api_key: str | None = None,
    incident_io_alert_source_config_id: str | None = None,
    incident_io_metadata: Iterable[str] = (),
) -> Notifications | None:
    """The record for `create`'s options, refused with one line where Argo refuses them and
    where an option would do nothing (a service without --notify-on-*, or the reverse)."""
    from .errors import CompileError

    n = Notifications(
        on_error=on_error,
        on_success=on_success,
        slack_webhook_url=slack_webhook_url or None,
        pager_duty_integration_key=pager_duty_integration_key or None,
        incident_io_api_key=incident_io_api_key or None,
        incident_io_alert_source_config_id=incident_io_alert_source_config_id or None,
        incident_io_metadata=_metadata(incident_io_metadata),
    )
    asked = on_error or on_success
    if asked and not n.services:
        raise CompileError(
            "--notify-on-error/--notify-on-success need a service: --notify-slack-webhook-url, "
            "--notify-pager-duty-integration-key or --notify-incident-io-api-key"
        )
    if n.services and not asked:
        raise CompileError(
            "a notification service is given but neither --notify-on-error nor "
            "--notify-on-success: say when to notify"
        )
    if n.incident_io_api_key and not n.incident_io_alert_source_config_id:
        raise CompileError(
            "incident.io alerts need an alert source: give --incident-io-alert-source-config-id"
        )
    if (
        n.incident_io_alert_source_config_id or n.incident_io_metadata
    ) and not n.incident_io_api_key:
        raise CompileError(
            "--incident-io-alert-source-config-id/--incident-io-metadata need "
            "--notify-incident-io-api-key"
        )
    return n if asked else None


def _metadata(pairs: Iterable[str]) -> dict[str, str]:
    from .errors import CompileError

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CompileError(f"--incident-io-metadata {pair!r}: expected Key=Value")
        if key in out:
            raise CompileError(f"--incident-io-metadata: key {key!r} given twice")
        out[key] = value
    return out


__all__ = [
    "SECRET_FIELDS",
    "SECRET_NAMES",
    "SERVICES",
    "SERVICE_NAMES",
    "Notifications",
    "notifications_from_options",
    "notify_sensor_name",
]
