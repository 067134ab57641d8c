"""Run-time side of @trigger and @trigger_on_finish: the event source and the sensors.

Events are durable records in the Dagster instance: `publish_event` reports a runless
materialization of the asset `dagster_metaflow/events` whose metadata carries the event
(name, id, timestamp, payload), so events survive restarts, are ordered by the instance's
storage ids and show in the UI under that asset. A deployment's sensor reads the events
(and, for @trigger_on_finish, the successful Dagster runs of the upstream flows) after its
cursor and requests one run per satisfied trigger, with Metaflow's semantics:

- `@trigger(event=...)`: each matching event starts one run; payload fields map onto
  parameters as the decorator says (a mapped field missing from the payload means the event
  does not match, as under Argo Events).
- several events (`events=[a, b]`, `flows=[A, B]`): a run starts once every one of them has
  occurred since the last run (the latest occurrence of each counts), as Argo Events'
  default AND of a sensor's dependencies.

The triggering events go to the run as the tag `dagster-metaflow/triggers`; the tasks'
`dagster_internal` decorator makes them `current.trigger` (and the start task's
`execution-triggers` metadata, which `Run.trigger` in Metaflow's client reads).
"""

from __future__ import annotations

import datetime
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    DagsterRunStatus,
    MetadataValue,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
)

from ..values import config_value
from .ids import op_config

if TYPE_CHECKING:
    from ..deployments import Deployment

EVENTS_ASSET = AssetKey(["dagster_metaflow", "events"])
TAG_TRIGGERS = "dagster-metaflow/triggers"
TAG_FLOW = "metaflow/flow"
TAG_PROJECT = "metaflow/project"
TAG_BRANCH = "metaflow/branch"
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_BATCH = 1000
_LOOKBACK = 60.0  # seconds: how far before its cursor the run-trigger query looks
_SEEN = 500  # upstream run ids remembered in the cursor


@dataclass(frozen=True)
class Trigger:
    """What one trigger of a deployment waits for (compiled from the flow's decorator)."""

    name: str  # event name; `metaflow.[project.branch.]Flow.end` for a finished flow
    kind: str = "event"  # "event" (published) or "run" (@trigger_on_finish)
    # (flow parameter, payload field, parameter type, required in the payload)
    parameters: tuple[tuple[str, str, str, bool], ...] = ()
    flow: str | None = None
    project: str | None = None
    branch: str | None = None


def publish_event(
    name: str, payload: Mapping[str, Any] | None = None, instance: DagsterInstance | None = None
) -> str:
    """Publish a Metaflow event to the Dagster instance (DAGSTER_HOME by default); every
    deployment whose @trigger waits for `name` starts a run from it. Returns the event id."""
    if not _EVENT_NAME.match(name):
        raise ValueError(f"invalid event name {name!r}: only letters, digits, '_', '-' and '.'")
    body = dict(payload or {})
    json.dumps(body)  # payloads are JSON, as under Argo Events
    event_id = uuid.uuid4().hex
    event = AssetMaterialization(
        asset_key=EVENTS_ASSET,
        description=f"Metaflow event {name}",
        metadata={
            "name": name,
            "id": event_id,
            "timestamp": int(time.time()),
            "payload": MetadataValue.json(body),
        },
    )
    # and as the event's own asset, which a @trigger flow's asset depends on (lineage)
    own = AssetMaterialization(
        asset_key=event_asset_key(name), description=event.description, metadata=event.metadata
    )
    if instance is not None:
        instance.report_runless_asset_event(event)
        instance.report_runless_asset_event(own)
    else:
        with DagsterInstance.get() as inst:
            inst.report_runless_asset_event(event)
            inst.report_runless_asset_event(own)
    return event_id


def event_asset_key(name: str) -> AssetKey:
    """The asset of a published event, `metaflow_events/<name>` (the compiler's
    `EVENT_ASSET_PREFIX`): every publish materializes it."""
    return AssetKey(["metaflow_events", name])


def _value(metadata: Mapping[str, Any], key: str) -> Any:
    entry = metadata.get(key)
    return getattr(entry, "value", entry)


def _new_events(
    instance: DagsterInstance, after: int, names: set[str]
) -> tuple[list[dict[str, Any]], int]:
    """Published events named in `names` with storage id > `after` (oldest first)."""
    from dagster import AssetRecordsFilter

    found: list[dict[str, Any]] = []
    last = after
    while True:
        result = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=EVENTS_ASSET, after_storage_id=last or None),
            limit=_BATCH,
            ascending=True,
        )
        for record in result.records:
            last = max(last, record.storage_id)
            mat = record.asset_materialization
            if mat is None:
                continue
            md = mat.metadata
            name = _value(md, "name")
            if name in names:
                found.append(
                    {
                        "name": name,
                        "id": _value(md, "id"),
                        "timestamp": _value(md, "timestamp"),
                        "type": "event",
                        "payload": _value(md, "payload") or {},
                    }
                )
        if not result.has_more:
            return found, last


def _finished_runs(
    instance: DagsterInstance,
    after: float,
    triggers: Sequence[Trigger],
    seen: list[str],
    since: float = 0.0,
) -> tuple[list[dict[str, Any]], float]:
    """Successful Dagster runs of the upstream flows that ended after `after` and are not in
    `seen` (runs are looked up from a minute before `after`: end times are not committed in
    order; `seen` keeps the ids counted recently, updated in place)."""
    found: list[dict[str, Any]] = []
    last = after
    for trig in triggers:
        if trig.kind != "run":
            continue
        tags = {TAG_FLOW: trig.flow or ""}
        if trig.project:
            tags[TAG_PROJECT] = trig.project
            tags[TAG_BRANCH] = trig.branch or ""
        records = instance.get_run_records(
            filters=RunsFilter(
                statuses=[DagsterRunStatus.SUCCESS],
                tags=tags,
                updated_after=datetime.datetime.fromtimestamp(after - _LOOKBACK, tz=datetime.UTC),
            ),
            limit=_BATCH,
        )
        for record in records:
            ended = record.end_time or 0.0
            if record.dagster_run.run_id in seen or ended <= max(after - _LOOKBACK, since):
                continue
            if not trig.project and record.dagster_run.tags.get(TAG_PROJECT):
                continue  # a plain flow name means the flow outside any @project
            last = max(last, ended)
            seen.append(record.dagster_run.run_id)
            pathspec = record.dagster_run.tags.get("metaflow/pathspec")
            if not pathspec:
                continue
            found.append(
                {
                    "name": trig.name,
                    "id": f"{pathspec}/end/end",
                    "timestamp": int(ended),
                    "type": "run",
                    "payload": {},
                }
            )
    found.sort(key=lambda e: e["timestamp"])
    return found, last


def _run_config(
    occurred: Mapping[str, dict[str, Any]], triggers: Sequence[Trigger], start_op: str
) -> dict[str, Any] | None:
    """Start-op config from the events' payloads; None if a mapped field is missing or invalid."""
    values: dict[str, Any] = {}
    for trig in triggers:
        payload = occurred[trig.name].get("payload") or {}
        for param, key, typ, required in trig.parameters:
            if payload.get(key) is None:
                if required:
                    return None
                continue
            try:
                values[param] = config_value(typ, payload[key])
            except (TypeError, ValueError):
                return None
    return op_config(start_op, values) if values else {}


def evaluate_triggers(
    context: SensorEvaluationContext, triggers: Sequence[Trigger], start_op: str, job_name: str
) -> SensorResult | SkipReason:
    """One sensor tick: new occurrences after the cursor -> run requests (see module doc)."""
    state = json.loads(context.cursor) if context.cursor else {}
    if "events" not in state:
        # first tick: count what happened since `dagster create` recorded the deployment
        # (before that, nothing counts; without a record, from now on)
        state = {**_watch_start(context.instance, job_name), "pending": {}}
    names = {t.name for t in triggers if t.kind == "event"}
    events, state["events"] = (
        _new_events(context.instance, int(state["events"]), names)
        if names
        else ([], state["events"])
    )
    seen: list[str] = list(state.get("seen", []))
    since = float(state.setdefault("since", state["runs"]))  # nothing before the deployment counts
    runs, state["runs"] = _finished_runs(
        context.instance, float(state["runs"]), triggers, seen, since
    )
    state["seen"] = seen[-_SEEN:]
    pending: dict[str, dict[str, Any]] = state.get("pending", {})
    requests = []
    skipped = 0
    for occurrence in sorted(events + runs, key=lambda e: e["timestamp"] or 0):
        pending[occurrence["name"]] = occurrence
        if not all(t.name in pending for t in triggers):
            continue
        run_config = _run_config(pending, triggers, start_op)
        fired = [pending[t.name] for t in triggers]
        pending = {}
        if run_config is None:
            skipped += 1
            context.log.warning(
                f"event(s) {', '.join(e['name'] + ' ' + str(e['id']) for e in fired)}: payload lacks a "
                "mapped field or has an invalid value; no run"
            )
            continue
        meta = [{k: e[k] for k in ("timestamp", "id", "name", "type")} for e in fired]
        requests.append(
            RunRequest(
                run_key="+".join(str(e["id"]) for e in fired),
                run_config=run_config,
                tags={TAG_TRIGGERS: json.dumps(meta), "dagster-metaflow/deployment": job_name},
            )
        )
    state["pending"] = pending
    cursor = json.dumps(state)
    if not requests:
        context.update_cursor(cursor)
        waiting = sorted(t.name for t in triggers if t.name not in pending)
        return SkipReason(
            f"Waiting for {', '.join(waiting)}" + (f" ({skipped} not matching)" if skipped else "")
        )
    return SensorResult(run_requests=requests, cursor=cursor)


def _watch_start(instance: DagsterInstance, job_name: str) -> dict[str, Any]:
    from ..deployments import get

    dep = get(instance, job_name)
    extra = dep.extra if dep is not None else {}
    return {
        "events": int(extra.get("events_after", latest_event_id(instance))),
        "runs": float(extra.get("created_at", time.time())),
    }


def latest_event_id(instance: DagsterInstance) -> int:
    """Storage id of the newest published event (0: none yet)."""
    result = instance.fetch_materializations(EVENTS_ASSET, limit=1, ascending=False)
    return result.records[0].storage_id if result.records else 0


def watch_extra(
    instance: DagsterInstance, prev: Deployment | None, watching: list[str]
) -> dict[str, Any]:
    """The record's `extra` for a deployment whose sensor waits for `watching` (events or
    upstream flows): where it starts counting them, at its first `create` (a redeployment
    keeps the start unless it watches for other things)."""
    import time

    extra = dict(prev.extra) if prev is not None else {}
    if watching:
        if extra.get("watching") != watching:  # other events: count from now
            extra.update(
                watching=watching, events_after=latest_event_id(instance), created_at=time.time()
            )
    return extra


def run_finished_event_names(
    flow: str, end_step: str, project: str | None, branch: str | None
) -> list[str]:
    """What Metaflow's Argo integration publishes when a run's end task succeeds (its
    auto-emitted events): `metaflow.<[project.branch.]Flow>.<end step>`, and `.end` too when
    the end step has another name, so `@trigger_on_finish`-style listeners find it."""
    qualified = ".".join(v for v in (project, branch, flow) if v) if project else flow
    names = [f"metaflow.{qualified}.{end_step}"]
    if end_step != "end":
        names.append(f"metaflow.{qualified}.end")
    return names


def run_finished_payload(
    flow: str, run_id: str, end_step: str, task_id: str, project: str | None, branch: str | None
) -> dict[str, Any]:
    """The payload Argo's auto-emitted event carries (same keys), so a @trigger that maps
    them (e.g. `{"upstream": "run_id"}`) works under either orchestrator."""
    pathspec = f"{flow}/{run_id}/{end_step}/{task_id}"
    payload: dict[str, Any] = {
        "id": pathspec,
        "pathspec": pathspec,
        "flow_name": flow,
        "run_id": run_id,
        "step_name": end_step,
        "task_id": task_id,
    }
    if project:
        payload.update(
            project_name=project,
            branch_name=branch or "",
            is_user_branch=str((branch or "").startswith("user.")),
            is_production=str(branch == "prod" or (branch or "").startswith("prod.")),
            project_flow_name=f"{project}.{branch}.{flow}",
        )
    payload["auto-generated-by-metaflow"] = "True"
    return payload
