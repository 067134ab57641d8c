"""@schedule / @trigger / @trigger_on_finish / @exit_hook: the compiled forms and the sensor
logic, against Metaflow's own decorators and a real (ephemeral) Dagster instance."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from dagster import DagsterInstance, RunRequest, SensorResult, SkipReason, build_sensor_context

from dagster_metaflow.automation import AutomationError, _event_triggers, _run_triggers, _schedule
from dagster_metaflow.runtime.sensors import (
    Trigger,
    evaluate_triggers,
    event_asset_key,
    publish_event,
)
from dagster_metaflow.translator import EVENT_ASSET_PREFIX


def _deco(cls: Any, **attributes: Any) -> Any:
    deco = cls(attributes=attributes)
    deco.flow_init("F", None, None, None, None, None, None, {"trigger": None})
    return deco


@pytest.mark.parametrize(
    "attributes",
    [
        {"hourly": True},
        {"daily": True},
        {"weekly": True},
        {"cron": "*/5 1-3 * * 1,3"},
        {"cron": "0 12 ? * MON-FRI *"},
        {"cron": "30 6 * * ? *", "timezone": "Europe/Paris"},
    ],
)
def test_schedule_has_argo_workflows_cadence_and_timezone(attributes: dict[str, Any]) -> None:
    from croniter import croniter
    from metaflow.plugins.argo.argo_workflows import ArgoWorkflows
    from metaflow.plugins.aws.step_functions.schedule_decorator import ScheduleDecorator

    deco = _deco(ScheduleDecorator, **attributes)
    argo_cron, argo_tz = ArgoWorkflows._get_schedule(
        SimpleNamespace(flow=SimpleNamespace(_flow_decorators={"schedule": [deco]}))
    )
    ours = _schedule([deco], {})
    assert ours is not None
    # Metaflow's AWS-style `?` ("any") is `*` in Dagster's cron, the fields are Argo's
    assert ours.cron == argo_cron.replace("?", "*") and ours.timezone == (argo_tz or None)
    assert croniter.is_valid(ours.cron)


def test_schedule_refusals() -> None:
    from metaflow.plugins.aws.step_functions.schedule_decorator import ScheduleDecorator

    assert _schedule([_deco(ScheduleDecorator, daily=False)], {}) is None
    with pytest.raises(AutomationError, match="parameter 'alpha' is required"):
        _schedule([_deco(ScheduleDecorator, hourly=True)], {"alpha": False})
    with pytest.raises(AutomationError, match="unknown timezone"):
        _schedule([_deco(ScheduleDecorator, hourly=True, timezone="Mars/Olympus")], {})
    with pytest.raises(AutomationError, match="not valid"):
        _schedule([_deco(ScheduleDecorator, cron="every day")], {})


def test_trigger_mappings_follow_argo_rules() -> None:
    from metaflow.plugins.events_decorator import TriggerDecorator

    one = _event_triggers([_deco(TriggerDecorator, event="ping")], {"alpha": True, "Beta": False})
    # implicit mapping: by name; a parameter without default must be in the payload
    assert one[0].parameters == (("alpha", "alpha", False), ("Beta", "Beta", True)) and not one[0].explicit
    many = _event_triggers(
        [_deco(TriggerDecorator, events=[{"name": "a", "parameters": {"beta": "b"}}, "c.d"])],
        {"alpha": True, "Beta": True},
    )
    assert [(t.name, t.parameters, t.explicit) for t in many] == [("a", (("Beta", "b", True),), True), ("c.d", (), True)]
    with pytest.raises(AutomationError, match="parameter 'alpha' has no default and no event maps it"):
        _event_triggers(
            [_deco(TriggerDecorator, events=[{"name": "a", "parameters": {"beta": "b"}}, "c"])],
            {"alpha": False, "beta": True},
        )
    with pytest.raises(AutomationError, match="parameter 'gamma' mapped from event 'a' is not in the flow"):
        _event_triggers([_deco(TriggerDecorator, event={"name": "a", "parameters": {"gamma": "g"}})], {})
    with pytest.raises(AutomationError, match="invalid event name"):
        _event_triggers([_deco(TriggerDecorator, event="bad name")], {})


def test_trigger_on_finish_is_project_aware() -> None:
    from metaflow.plugins.events_decorator import TriggerOnFinishDecorator

    plain = _run_triggers([_deco(TriggerOnFinishDecorator, flow="Up")], None, None)
    assert [(t.name, t.flow, t.project) for t in plain] == [("metaflow.Up.end", "Up", None)]
    in_project = _run_triggers([_deco(TriggerOnFinishDecorator, flows=["Up", "p.b.Other"])], "proj", "user.me")
    assert [t.name for t in in_project] == ["metaflow.proj.user.me.Up.end", "metaflow.p.b.Other.end"]


def _tick(instance: DagsterInstance, triggers: tuple[Trigger, ...], cursor: str | None) -> tuple[Any, str | None]:
    ctx = build_sensor_context(instance=instance, cursor=cursor)
    result = evaluate_triggers(ctx, triggers, start_op="op_start", job_name="J")
    if isinstance(result, SensorResult):
        return result.run_requests or [], result.cursor
    assert isinstance(result, SkipReason)
    return [], ctx.cursor


def test_events_start_one_run_each_with_mapped_parameters() -> None:
    triggers = (Trigger("data.ready", parameters=(("alpha", "a", "float", True),)),)
    with DagsterInstance.ephemeral() as instance:
        publish_event("data.ready", {"a": 9}, instance=instance)  # before the sensor: ignored
        requests, cursor = _tick(instance, triggers, None)
        assert requests == []
        ids = [publish_event("data.ready", {"a": v}, instance=instance) for v in (1.5, "2.5")]
        publish_event("other.event", {"a": 7}, instance=instance)
        publish_event("data.ready", {"b": 1}, instance=instance)  # mapped field missing: no run
        publish_event("data.ready", {"a": None}, instance=instance)  # null: missing too
        requests, cursor = _tick(instance, triggers, cursor)
        assert [r.run_config["ops"]["op_start"]["config"] for r in requests] == [{"alpha": 1.5}, {"alpha": 2.5}]
        assert [r.run_key for r in requests] == ids
        meta = json.loads(requests[0].tags["dagster-metaflow/triggers"])
        assert meta == [{"timestamp": meta[0]["timestamp"], "id": ids[0], "name": "data.ready", "type": "event"}]
        assert _tick(instance, triggers, cursor)[0] == []  # nothing new: no run
        # each publish also materializes the event's own asset, which @trigger flows read
        own = instance.get_latest_materialization_event(event_asset_key("data.ready"))
        assert own is not None and own.asset_materialization.metadata["payload"].value == {"a": None}
    assert event_asset_key("x").path[0] == EVENT_ASSET_PREFIX  # the compiler's dependency key


def test_several_events_start_a_run_once_all_occurred() -> None:
    triggers = (Trigger("a"), Trigger("b", parameters=(("n", "n", "int", True),)))
    with DagsterInstance.ephemeral() as instance:
        _, cursor = _tick(instance, triggers, None)
        publish_event("a", instance=instance)
        publish_event("a", instance=instance)
        requests, cursor = _tick(instance, triggers, cursor)
        assert requests == []
        publish_event("b", {"n": "3"}, instance=instance)
        requests, cursor = _tick(instance, triggers, cursor)
        assert len(requests) == 1 and isinstance(requests[0], RunRequest)
        assert requests[0].run_config["ops"]["op_start"]["config"] == {"n": 3}
        assert [e["name"] for e in json.loads(requests[0].tags["dagster-metaflow/triggers"])] == ["a", "b"]
        publish_event("b", {"n": 1}, instance=instance)
        assert _tick(instance, triggers, cursor)[0] == []  # `a` must occur again first


def test_unsupported_flow_decorators_are_refused_with_a_reason() -> None:
    from metaflow.flowspec import FlowStateItems

    from dagster_metaflow.automation import build_automation

    def flow(**decos: Any) -> Any:
        return SimpleNamespace(_flow_state={FlowStateItems.FLOW_DECORATORS: {k: [v] for k, v in decos.items()}})

    build_automation(flow(conda_base=object(), pypi_base=object()), [])  # through the step decorators
    with pytest.raises(AutomationError, match="@airflow_s3_key_sensor is not supported: it is an Apache Airflow sensor"):
        build_automation(flow(airflow_s3_key_sensor=object()), [])
    with pytest.raises(AutomationError, match="@trigger and @trigger_on_finish on one flow"):
        build_automation(flow(trigger=object(), trigger_on_finish=object()), [])
    assert build_automation(flow(project=object()), []).schedule is None
