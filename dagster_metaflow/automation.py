"""Flow-level automation decorators (@schedule, @trigger, @trigger_on_finish, @exit_hook)
read into pure data, with the same rules as Metaflow's Argo Workflows integration.

Every flow decorator Metaflow ships is either handled here (or by @project's naming) or
refused with one line; nothing is accepted and then ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

# Metaflow's own flow decorators and what becomes of them under Dagster (@conda_base and
# @pypi_base act through the @conda/@pypi step decorators Metaflow attaches to every step)
HANDLED_FLOW_DECORATORS = frozenset(
    {"project", "schedule", "trigger", "trigger_on_finish", "exit_hook", "conda_base", "pypi_base"}
)
REFUSED_FLOW_DECORATORS = {
    "airflow_s3_key_sensor": "it is an Apache Airflow sensor; use @trigger with a published event",
    "airflow_external_task_sensor": "it is an Apache Airflow sensor; use @trigger_on_finish",
}


class AutomationError(Exception):
    """A flow decorator that cannot be deployed as written; the message names it."""


@dataclass(frozen=True)
class ScheduleIR:
    """@schedule: the cron Dagster runs (5 fields, as Argo Workflows gets it) and its zone."""

    cron: str
    timezone: str | None = None
    metaflow_cron: str = ""  # the decorator's own expression (AWS form for hourly/daily/weekly)


@dataclass(frozen=True)
class TriggerIR:
    """One event a triggered deployment waits for: a published event (`kind="event"`) or
    the successful end of an upstream flow (`kind="run"`, event `metaflow.[p.b.]Flow.end`)."""

    name: str
    kind: Literal["event", "run"] = "event"
    # (flow parameter, payload field, required: a missing field means the event does not match)
    parameters: tuple[tuple[str, str, bool], ...] = ()
    explicit: bool = True  # mapped by the decorator (else: one event, every parameter by name)
    flow: str | None = None  # kind="run": the upstream flow
    project: str | None = None
    branch: str | None = None


@dataclass(frozen=True)
class ExitHooksIR:
    on_success: tuple[str, ...] = ()
    on_error: tuple[str, ...] = ()


@dataclass(frozen=True)
class AutomationIR:
    schedule: ScheduleIR | None = None
    triggers: tuple[TriggerIR, ...] = ()
    exit_hooks: ExitHooksIR | None = None
    project_name: str | None = None  # the deployment's own @project and branch
    branch_name: str | None = None


def flow_decorators(flow: Any) -> dict[str, list[Any]]:
    """The flow's decorators by name (works on the flow class and on an instance)."""
    state = getattr(flow, "_flow_state", None)
    if state is None:
        return {}
    from metaflow.flowspec import FlowStateItems

    decos = state[FlowStateItems.FLOW_DECORATORS] or {}
    return {name: list(v) if isinstance(v, list) else [v] for name, v in decos.items()}


def build_automation(
    flow: Any,
    parameters: Iterable[tuple[str, bool]],
    project_name: str | None = None,
    branch_name: str | None = None,
) -> AutomationIR:
    """Read the flow's automation decorators. `parameters` are (name, has a value without
    input) for the flow's parameters; project/branch are the deployment's (@project)."""
    decos = flow_decorators(flow)
    for name in decos:
        if name in REFUSED_FLOW_DECORATORS:
            raise AutomationError(
                f"decorator @{name} is not supported: {REFUSED_FLOW_DECORATORS[name]}"
            )
    params = dict(parameters)
    if decos.get("trigger") and decos.get("trigger_on_finish"):
        raise AutomationError(
            "@trigger and @trigger_on_finish on one flow are not supported (as under Argo "
            "Workflows): use one of them"
        )
    return AutomationIR(
        schedule=_schedule(decos.get("schedule"), params),
        triggers=_event_triggers(decos.get("trigger"), params)
        or _run_triggers(decos.get("trigger_on_finish"), project_name, branch_name),
        exit_hooks=_exit_hooks(decos.get("exit_hook")),
        project_name=project_name,
        branch_name=branch_name,
    )


def _schedule(decos: list[Any] | None, params: dict[str, bool]) -> ScheduleIR | None:
    if not decos:
        return None
    deco = decos[0]
    expr = getattr(deco, "schedule", None)
    if not expr:
        return None  # @schedule(daily=False): no schedule, as Argo Workflows treats it
    missing = [name for name, ok in params.items() if not ok]
    if missing:
        raise AutomationError(
            f"@schedule: parameter {missing[0]!r} is required and has no default, so a scheduled "
            "run could not start; give it a default"
        )
    # what Argo Workflows deploys: the first five fields; `?` ("no specific value" in the
    # AWS form Metaflow uses for hourly/daily/weekly) is `*` for Dagster's cron
    cron = " ".join(expr.split()[:5]).replace("?", "*")
    from ._dagster_private import is_valid_cron_string  # what Dagster will check

    if not is_valid_cron_string(cron):
        raise AutomationError(f"@schedule: cron expression {expr!r} is not valid ({cron!r})")
    tz = deco.timezone or None
    if tz:
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(tz)
        except Exception:
            raise AutomationError(
                f"@schedule: unknown timezone {tz!r} (use an IANA name)"
            ) from None
    return ScheduleIR(cron=cron, timezone=tz, metaflow_cron=expr)


def _event_triggers(decos: list[Any] | None, params: dict[str, bool]) -> tuple[TriggerIR, ...]:
    """@trigger, checked as Metaflow's Argo integration checks it (`_process_triggers`)."""
    if not decos:
        return ()
    deco = decos[0]
    if getattr(deco, "options", None):
        raise AutomationError(
            "@trigger: options= (e.g. reset_at) are not supported by dagster-metaflow"
        )
    deco.format_deploytime_value()  # deploy-time (callable) names and mappings, evaluated now
    by_lower = {p.lower(): p for p in params}
    out: list[TriggerIR] = []
    seen: set[str] = set()
    for event in deco.triggers:
        name = event["name"]
        if not re.match(r"^[A-Za-z0-9_.-]+$", str(name)):
            raise AutomationError(
                f"@trigger: invalid event name {name!r}: only letters, digits, '_', '-' and '.'"
            )
        mapping = []
        for param, payload_key in (event.get("parameters") or {}).items():
            if not re.match(r"^[A-Za-z0-9_]+$", str(payload_key)):
                raise AutomationError(
                    f"@trigger: invalid payload key {payload_key!r} for event {name!r}: "
                    "only letters, digits and '_'"
                )
            real = by_lower.get(str(param).lower())
            if real is None:
                raise AutomationError(
                    f"@trigger: parameter {param!r} mapped from event {name!r} is not in the flow"
                )
            if real.lower() in seen:
                raise AutomationError(f"@trigger: parameter {param!r} is mapped twice")
            seen.add(real.lower())
            mapping.append((real, str(payload_key), True))
        out.append(TriggerIR(name=str(name), kind="event", parameters=tuple(mapping)))
    if len(out) == 1 and not out[0].parameters:
        # one event, no mapping: every parameter from the payload field of its name (Argo)
        # (decision: such fields are optional, a missing one keeps the parameter's default;
        # a parameter without a default must be in the payload)
        out[0] = TriggerIR(
            name=out[0].name,
            parameters=tuple((p, p, not has_value) for p, has_value in params.items()),
            explicit=False,
        )
        return tuple(out)
    mapped = {p for t in out for p, *_ in t.parameters}
    unmapped = [p for p, has_value in params.items() if not has_value and p not in mapped]
    if unmapped:
        raise AutomationError(
            f"@trigger: parameter {unmapped[0]!r} has no default and no event maps it, so a "
            "triggered run could not start; map it from an event field or give it a default"
        )
    return tuple(out)


def _run_triggers(
    decos: list[Any] | None, project_name: str | None, branch_name: str | None
) -> tuple[TriggerIR, ...]:
    """@trigger_on_finish: the upstream flows, @project-aware as under Argo Workflows."""
    if not decos:
        return ()
    deco = decos[0]
    if getattr(deco, "options", None):
        raise AutomationError("@trigger_on_finish: options= are not supported by dagster-metaflow")
    deco.format_deploytime_value()
    out = []
    for event in deco.triggers:
        project = event.get("project") or project_name
        branch = event.get("branch") or branch_name
        if (project or branch) and not (project and branch):
            raise AutomationError(
                f"@trigger_on_finish: flow {event['flow']!r}: incomplete project info; give both "
                "'project' and 'project_branch' or use @project"
            )
        fq_name = ".".join(v for v in (project, branch, event["flow"]) if v)
        name = f"metaflow.{fq_name}.end"
        out.append(
            TriggerIR(name=name, kind="run", flow=event["flow"], project=project, branch=branch)
        )
    return tuple(out)


def _exit_hooks(decos: list[Any] | None) -> ExitHooksIR | None:
    if not decos:
        return None
    for deco in decos:
        if deco.attributes.get("options"):
            raise AutomationError("@exit_hook: options= are not supported by dagster-metaflow")
    return ExitHooksIR(
        on_success=tuple(n for d in decos for n in d.success_hooks),
        on_error=tuple(n for d in decos for n in d.error_hooks),
    )
