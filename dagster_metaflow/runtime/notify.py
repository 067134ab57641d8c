"""Run-end notifications (`create --notify-on-error/--notify-on-success`, as Argo Workflows):
Slack (incoming webhook), PagerDuty (Events API v2) and incident.io (HTTP alert source).

Each run is announced once. The sender is whoever sees the run end first:
- the run worker, at the end of the run, before the run's status is final (no daemon needed);
- the worker's watchdog, when the worker died and the watchdog ends the run;
- the deployment's run-status sensors under the daemon, for a run nobody above announced (a
  run failed by the daemon's monitoring, or before its worker started).
The hidden run tag `.dagster/metaflow-notified` lists the services already told; every sender
skips those and adds the ones it reached, so a service that failed is tried again by the
next sender. Two senders overlap only if one dies between a delivery and its tag.

Secrets may be given as `env:NAME`: read from the environment where the message is sent (the
worker, the daemon), so they are not written into the generated file.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..notifications import SERVICE_NAMES, Notifications
from .failures import TAG_ERROR
from .ids import run_page_url

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun

TAG_NOTIFIED = ".dagster/metaflow-notified"  # services told of this run's end, comma-separated
PAGER_DUTY_URL_VAR = "DAGSTER_METAFLOW_PAGERDUTY_URL"  # default https://events.pagerduty.com
INCIDENT_IO_URL_VAR = "DAGSTER_METAFLOW_INCIDENT_IO_URL"  # default https://api.incident.io
NOTIFY_VAR = "DAGSTER_METAFLOW_NOTIFY"  # the notifications, JSON, for the worker's watchdog
TIMEOUT = 10.0  # seconds per request


class NotificationError(Exception):
    """A message that could not be delivered; the text says to which service and why."""


@dataclass(frozen=True)
class RunEnd:
    """What a message says about one ended run."""

    flow: str
    run_id: str  # Metaflow's
    dagster_run_id: str
    successful: bool
    reason: str | None = None  # why it failed, one line (the failing task and the user's error)
    project: str | None = None
    branch: str | None = None

    @property
    def pathspec(self) -> str:
        return f"{self.flow}/{self.run_id}"

    @property
    def outcome(self) -> str:
        return "succeeded" if self.successful else "failed"

    def links(self) -> list[tuple[str, str]]:
        """(text, url) of the run's pages that are configured: never a guessed URL."""
        out = []
        dagster_ui = run_page_url(self.dagster_run_id)
        if dagster_ui:
            out.append(("Dagster UI", dagster_ui))
        metaflow_ui = _metaflow_ui_url()
        if metaflow_ui:
            out.append(("Metaflow UI", f"{metaflow_ui}/{self.flow}/{self.run_id}"))
        return out


def _metaflow_ui_url() -> str:
    try:
        from metaflow.metaflow_config import UI_URL
    except Exception:
        return ""
    return str(UI_URL or "").strip().rstrip("/")


def secret(value: str, what: str) -> str:
    """`value`, or the environment variable it names as `env:NAME`."""
    if not value.startswith("env:"):
        return value
    name = value[4:]
    found = os.environ.get(name)
    if not found:
        raise NotificationError(f"{what}: environment variable {name} is not set")
    return found


def slack_message(end: RunEnd) -> dict[str, Any]:
    """Slack incoming-webhook payload: `text` (the notification's fallback) and Block Kit blocks."""
    icon = ":white_check_mark:" if end.successful else ":rotating_light:"
    text = f"{icon} Metaflow run _{end.pathspec}_ {end.outcome}!"
    detail = f"*Flow:* {end.flow}\n*Run:* {end.pathspec}"
    if end.reason:
        detail += f"\n*Error:* {end.reason}"
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "section", "text": {"type": "mrkdwn", "text": detail[:3000]}},
    ]
    if end.project:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Project:* {end.project}"},
                    {"type": "mrkdwn", "text": f"*Project Branch:* {end.branch or ''}"},
                ],
            }
        )
    links = end.links()
    if links:
        elements = [{"type": "mrkdwn", "text": f"<{url}|{name}>"} for name, url in links]
        blocks.append({"type": "context", "elements": elements})
    return {"text": text, "blocks": blocks}


def pager_duty_event(end: RunEnd, routing_key: str) -> tuple[str, dict[str, Any]]:
    """(path, body) for PagerDuty's Events API v2: an alert (trigger) for a failure, a change
    event for a success, as Argo Workflows sends them. The run's pathspec deduplicates."""
    details = {"Flow": end.flow, "Run ID": end.run_id, "Dagster run": end.dagster_run_id}
    if end.reason:
        details["Error"] = end.reason
    links = [{"href": url, "text": name} for name, url in end.links()]
    summary = f"Metaflow run {end.pathspec} {end.outcome}"
    if end.reason:
        summary += f": {end.reason}"
    payload: dict[str, Any] = {
        "summary": summary[:1024],
        "source": end.pathspec,
        "custom_details": details,
    }
    if end.successful:
        return "/v2/change/enqueue", {
            "routing_key": routing_key,
            "payload": payload,
            "links": links,
        }
    payload["severity"] = "error"
    body = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": end.pathspec,
        "payload": payload,
        "links": links,
    }
    return "/v2/enqueue", body


def incident_io_alert(end: RunEnd, metadata: Mapping[str, str]) -> dict[str, Any]:
    """Body of an incident.io HTTP alert event (`POST /v2/alert_events/http/<source id>`)."""
    links = end.links()
    description = f"Metaflow run {end.pathspec} {end.outcome}!"
    if end.reason:
        description += f"\n\nError: {end.reason}"
    if links:
        description += "\n\nSee the run at:\n\n" + "\n\n".join(f"[{n}]({u})" for n, u in links)
    body: dict[str, Any] = {
        "title": f"Flow {end.flow} has {end.outcome}.",
        "status": "firing",
        "deduplication_key": end.pathspec,
        "description": description,
        "metadata": {
            **dict(metadata),
            "run_status": end.outcome,
            "flow_name": end.flow,
            "run_id": end.run_id,
        },
    }
    if links:
        body["source_url"] = links[0][1]
    return body


def _post(url: str, body: Mapping[str, Any], headers: Mapping[str, str], what: str) -> None:
    data = json.dumps(body).encode()
    try:
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/json", **headers}
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise NotificationError(f"{what}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotificationError(f"{what}: {reason}") from None
    except Exception as exc:  # a malformed URL, a broken answer: named, never the URL
        raise NotificationError(f"{what}: {type(exc).__name__}") from None


def send(service: str, end: RunEnd, n: Notifications) -> None:
    """Deliver the message of `end` to one service (NotificationError if it failed)."""
    what = SERVICE_NAMES[service]
    key = secret(n.secret_of(service) or "", what)  # the Slack webhook's URL, else a key
    if service == "slack":
        _post(key, slack_message(end), {}, what)
    elif service == "pager_duty":
        path, body = pager_duty_event(end, key)
        base = os.environ.get(PAGER_DUTY_URL_VAR) or "https://events.pagerduty.com"
        _post(base.rstrip("/") + path, body, {}, what)
    else:  # incident_io
        source = n.incident_io_alert_source_config_id or ""
        base = os.environ.get(INCIDENT_IO_URL_VAR) or "https://api.incident.io"
        url = f"{base.rstrip('/')}/v2/alert_events/http/{source}"
        body = incident_io_alert(end, n.incident_io_metadata)
        _post(url, body, {"Authorization": f"Bearer {key}"}, what)


def run_end_of(run: DagsterRun, flow: str, successful: bool, reason: str | None = None) -> RunEnd:
    """The message's facts from the Dagster run (its tags keep the project and the error)."""
    from .ids import metaflow_run_id
    from .sensors import TAG_BRANCH, TAG_PROJECT

    return RunEnd(
        flow=flow,
        run_id=metaflow_run_id(run.run_id),
        dagster_run_id=run.run_id,
        successful=successful,
        reason=reason or (None if successful else run.tags.get(TAG_ERROR)),
        project=run.tags.get(TAG_PROJECT),
        branch=run.tags.get(TAG_BRANCH),
    )


def notified(run: DagsterRun, outcome: str) -> list[str]:
    """The services already told of this outcome of this run. The tag names the run and the
    outcome, because a re-executed run inherits its parent's tags."""
    run_id, _, rest = (run.tags.get(TAG_NOTIFIED) or "").partition(":")
    said, _, services = rest.partition(":")
    if run_id != run.run_id or said != outcome:
        return []
    return [s for s in services.split(",") if s]


def _record(run_id: str, outcome: str, services: list[str]) -> str:
    return f"{run_id}:{outcome}:{','.join(services)}"


def notify(
    instance: DagsterInstance,
    run: DagsterRun,
    n: Notifications,
    end: RunEnd,
    log: Callable[[str, bool], None] = lambda text, ok: None,
) -> list[str]:
    """Tell every configured service not yet told of this run's end; record each delivery in
    the run's hidden tag. `log(line, ok)` hears each outcome. Returns the services reached."""
    if not n.wanted(end.successful):
        return []
    fresh = instance.get_run_by_id(run.run_id) or run
    done = notified(fresh, end.outcome)
    reached = []
    for service in n.services:
        if service in done:
            continue
        try:
            send(service, end, n)
        except NotificationError as exc:
            log(f"notification of {end.pathspec} ({end.outcome}) not sent: {exc}", False)
            continue
        except Exception as exc:  # never the message: it might quote a secret
            what = f"{service}: {type(exc).__name__}"
            log(f"notification of {end.pathspec} ({end.outcome}) not sent: {what}", False)
            continue
        done.append(service)
        reached.append(service)
        try:
            instance.add_run_tags(
                run.run_id, {TAG_NOTIFIED: _record(run.run_id, end.outcome, done)}
            )
        except Exception as exc:  # delivered all the same; a later sender may repeat it
            log(f"delivery to {service} not recorded: {type(exc).__name__}: {exc}", False)
    if reached:
        log(f"notified {', '.join(reached)} that {end.pathspec} {end.outcome}", True)
    return reached


def announce_run_end(job_context: Any, successful: bool, reason: str | None) -> Iterator[Any]:
    """The run worker's announcement at the run's end (engine events say what was sent);
    nothing for a run being terminated, or a flow without notifications."""
    from dagster import DagsterEvent, DagsterRunStatus

    from .._dagster_private import EngineEventData

    n, flow = _settings_of(job_context)
    if n is None or not n.wanted(successful):
        return
    lines: list[tuple[str, bool]] = []
    try:
        run = job_context.instance.get_run_by_id(job_context.run_id)
        # terminated on purpose: not announced; already ended by someone else (the daemon's
        # max_runtime): its run-status sensor announces it
        if run is None or run.is_finished or run.status == DagsterRunStatus.CANCELING:
            return
        end = run_end_of(run, flow, successful, reason)
        notify(job_context.instance, run, n, end, lambda t, ok: lines.append((t, ok)))
    except Exception as exc:  # never changes the run's outcome
        lines.append((f"notifications not sent: {type(exc).__name__}: {exc}", False))
    for text, ok in lines:
        yield DagsterEvent.engine_event(
            job_context, text if ok else f"Warning: {text}", EngineEventData()
        )


def _settings_of(job_context: Any) -> tuple[Notifications | None, str]:
    from .flow import flow_of_context

    flow = flow_of_context(job_context)
    if flow is None or flow.notifications is None:
        return None, ""
    return flow.notifications, flow.name


def watchdog_env(job_context: Any) -> dict[str, str]:
    """What the worker's watchdog needs to announce the run if the worker dies ($NOTIFY_VAR)."""
    n, flow = _settings_of(job_context)
    if n is None or not n.on_error:
        return {}
    return {NOTIFY_VAR: json.dumps({"flow": flow, "notifications": asdict(n)})}


def announce_lost_run(instance: DagsterInstance, run: DagsterRun, reason: str) -> None:
    """The watchdog's announcement of a run whose worker died: called just before it fails
    the run (so the run-status sensor, which waits for FAILURE, finds it told), or after
    another reader failed it first."""
    from dagster import DagsterRunStatus

    text = os.environ.get(NOTIFY_VAR)
    if not text or run.status in (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED):
        return
    lines: list[str] = []
    try:
        spec = json.loads(text)
        n = Notifications(**spec["notifications"])
        end = run_end_of(run, spec["flow"], False, run.tags.get(TAG_ERROR) or reason)
        notify(instance, run, n, end, lambda t, ok: lines.append(t))
        for line in lines:
            instance.report_engine_event(line, run)
    except Exception:  # the watchdog's own duties (ending the run) come first
        pass


def notify_from_sensor(context: Any, flow: str, n: Notifications | None, successful: bool) -> None:
    """Body of the generated run-status sensors: announce a run nobody else announced."""
    if n is None:
        return
    run = context.dagster_run
    reason = None
    if not successful:
        event = getattr(context, "failure_event", None)
        reason = run.tags.get(TAG_ERROR) or (getattr(event, "message", None) or None)
    end = run_end_of(run, flow, successful, reason)

    def log(text: str, ok: bool) -> None:
        (context.log.info if ok else context.log.warning)(text)

    notify(context.instance, run, n, end, log)  # an error fails the tick: tried again


__all__ = [
    "INCIDENT_IO_URL_VAR",
    "NOTIFY_VAR",
    "PAGER_DUTY_URL_VAR",
    "TAG_NOTIFIED",
    "NotificationError",
    "Notifications",
    "RunEnd",
    "incident_io_alert",
    "notify",
    "notify_from_sensor",
    "pager_duty_event",
    "run_end_of",
    "slack_message",
]
