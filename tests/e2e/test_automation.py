"""@schedule, @trigger, @trigger_on_finish with a real dagster-daemon; @exit_hook on success,
failure and termination. Every run is checked through the Metaflow client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conftest import BIN, FLOWS, Workspace, short_key, wait_for
from services import WebhookServer

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e


def _runs(ws: Workspace, job: str) -> list[Any]:
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(ws.dagster_home)) as instance:
        return [r for r in instance.get_runs() if r.job_name == job]


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    return wait_for(what, check, timeout, every=1)


def _finished(ws: Workspace, job: str, n: int) -> Callable[[], list[Any]]:
    def check() -> list[Any]:
        runs = [r for r in _runs(ws, job) if r.is_finished]
        return runs if len(runs) >= n else []

    return check


def _started_a_minute_ago(ws: Workspace, definitions_file: str, schedule: str) -> float:
    """Store `schedule` as started 61 s ago, as if dagster-daemon had been down at its last
    tick: the daemon's first iteration launches that missed tick (the latest one, as Dagster
    does for a schedule without partitions) instead of the test waiting up to a minute for
    the next. The state is the one the daemon would store itself (its origin from the same
    workspace file); returns the moment it was stored."""
    import time

    from dagster import DagsterInstance
    from dagster._core.definitions.repository_definition.valid_definitions import (
        SINGLETON_REPOSITORY_NAME,
    )
    from dagster._core.remote_origin import RemoteInstigatorOrigin, RemoteRepositoryOrigin
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        InstigatorType,
        ScheduleInstigatorData,
    )
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    target = WorkspaceFileTarget([str(ws.dagster_home / "dagster_metaflow_workspace.yaml")])
    (location,) = [
        o for o in target.create_origins() if o.loadable_target_origin.python_file.endswith(definitions_file)
    ]
    origin = RemoteInstigatorOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), schedule)
    now = time.time()
    data = ScheduleInstigatorData("* * * * *", start_timestamp=now - 61)
    state = InstigatorState(origin, InstigatorType.SCHEDULE, InstigatorStatus.DECLARED_IN_CODE, data)
    with DagsterInstance.from_config(str(ws.dagster_home)) as instance:
        instance.add_instigator_state(state)
    return now


def _mf_run(flow: str, dagster_run: Any) -> Any:
    from metaflow import Run

    return Run(f"{flow}/{metaflow_run_id(dagster_run.run_id)}", _namespace_check=False)


@pytest.mark.flow("triggered_flow.py")
def test_daemon_runs_schedules_events_and_upstream_finishes(workspace: Workspace) -> None:
    flows = ("upstream_flow.py", "downstream_flow.py", "scheduled_flow.py", "end_event_flow.py")
    for name in flows:
        shutil.copy(FLOWS / name, workspace.dir / name)
    for name in ("triggered_flow.py", *flows):
        res = workspace.run(sys.executable, name, "dagster", "create", name.replace("_flow.py", "_dagster.py"))
        assert "dagster-daemon run -w" in res.stderr + res.stdout or name == "upstream_flow.py"
    stored_at = _started_a_minute_ago(workspace, "scheduled_dagster.py", "ScheduledFlow_schedule")
    env = dict(os.environ, DAGSTER_HOME=str(workspace.dagster_home))
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace.dagster_home / "dagster_metaflow_workspace.yaml")],
        cwd=workspace.dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # events: published from Python and from the shell; an unrelated one starts nothing
        from dagster import DagsterInstance

        import dagster_metaflow

        with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
            first = dagster_metaflow.publish_event("data.ready", {"a": 1.5}, instance=instance)
        workspace.run(str(BIN / "dagster-metaflow"), "publish-event", "data.ready", "--field", "a=2.5")
        workspace.run(str(BIN / "dagster-metaflow"), "publish-event", "unrelated.event", "--payload", '{"a": 9}')
        # upstream: one success, one failure -> exactly one downstream run
        workspace.run(sys.executable, "upstream_flow.py", "dagster", "trigger", "--wait", "--run-id-file", "up")
        workspace.run(sys.executable, "upstream_flow.py", "dagster", "trigger", "--fail", "true", "--wait", check=False)

        triggered = _wait("two triggered runs", _finished(workspace, "TriggeredFlow", 2), 240)
        downstream = _wait("the downstream run", _finished(workspace, "DownstreamFlow", 1), 240)
        on_event = _wait("the run started by UpstreamFlow's end event", _finished(workspace, "EndEventFlow", 1), 240)
        scheduled = _wait("a scheduled run", _finished(workspace, "ScheduledFlow", 1), 150)
    finally:
        os.killpg(daemon.pid, 15)
        daemon.wait(timeout=60)

    assert len(triggered) == 2 and all(r.status.value == "SUCCESS" for r in triggered)
    seen = sorted((_mf_run("TriggeredFlow", r)["start"].task.data.seen_alpha, _mf_run("TriggeredFlow", r)) for r in triggered)
    assert [alpha for alpha, _ in seen] == [1.5, 2.5]
    start = seen[0][1]["start"].task.data
    assert start.event_name == "data.ready" and start.event_id == first
    assert seen[0][1].trigger.event.name == "data.ready"  # Metaflow's client: Run.trigger

    assert len(downstream) == 1 and downstream[0].status.value == "SUCCESS"
    up_id = (workspace.dir / "up").read_text().strip()
    data = _mf_run("DownstreamFlow", downstream[0])["start"].task.data
    assert data.upstream == f"UpstreamFlow/{up_id}" and data.upstream_value == 42
    # the successful upstream run published metaflow.UpstreamFlow.end (--auto-emit-events,
    # on by default) with Argo's payload; the failed one published nothing
    assert len(on_event) == 1 and on_event[0].status.value == "SUCCESS"
    assert len(_runs(workspace, "EndEventFlow")) == 1
    assert _mf_run("EndEventFlow", on_event[0])["start"].task.data.seen_run == up_id

    # one run per schedule tick (more than one tick may have passed while waiting); the daemon
    # kept the state stored before it started (the same origin: its missed tick was run)
    from dagster._core.storage.tags import SCHEDULED_EXECUTION_TIME_TAG

    ticks = [r.tags.get(SCHEDULED_EXECUTION_TIME_TAG) for r in scheduled]
    assert len(set(ticks)) == len(ticks) and None not in ticks
    with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
        kept = [s for s in instance.all_instigator_state() if s.name == "ScheduledFlow_schedule"]
    assert [s.instigator_data.start_timestamp for s in kept] == [stored_at - 61]
    assert all(r.status.value == "SUCCESS" for r in scheduled)
    assert scheduled[0].tags.get("dagster/schedule_name") == "ScheduledFlow_schedule"
    assert _mf_run("ScheduledFlow", scheduled[0]).successful

    # the CLI and the Deployer show what a deployment schedules / waits for; delete stops it
    out = workspace.run(sys.executable, "scheduled_flow.py", "dagster", "describe").stdout
    assert "ScheduledFlow_schedule cron '* * * * *' (UTC): RUNNING" in out, out
    out = workspace.run(sys.executable, "downstream_flow.py", "dagster", "describe").stdout
    assert "DownstreamFlow_trigger_on_finish (@trigger_on_finish metaflow.UpstreamFlow.end): RUNNING" in out, out
    os.environ["DAGSTER_HOME"] = str(workspace.dagster_home)
    try:
        from metaflow.runner.deployer import DeployedFlow

        scheduled_flow = DeployedFlow.from_deployment("ScheduledFlow", impl="dagster")
        assert scheduled_flow.is_scheduled and not scheduled_flow.is_triggered
        assert scheduled_flow.schedule["cron"] == "* * * * *"
        assert DeployedFlow.from_deployment("TriggeredFlow", impl="dagster").triggers == ["data.ready"]
    finally:
        del os.environ["DAGSTER_HOME"]
    res = workspace.run(sys.executable, "scheduled_flow.py", "dagster", "delete")
    assert "Stopped ScheduledFlow_schedule" in res.stderr + res.stdout
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
        states = {s.name: s.status.value for s in instance.all_instigator_state()}
    assert states["ScheduledFlow_schedule"] == "STOPPED"
    assert states["TriggeredFlow_trigger"] in ("RUNNING", "DECLARED_IN_CODE")
    assert "scheduled_dagster.py" not in (workspace.dagster_home / "dagster_metaflow_workspace.yaml").read_text()
    # created again: it starts afresh (the STOPPED state left by delete is forgotten)
    workspace.run(sys.executable, "scheduled_flow.py", "dagster", "create", "scheduled_dagster.py")
    out = workspace.run(sys.executable, "scheduled_flow.py", "dagster", "describe").stdout
    assert "ScheduledFlow_schedule cron '* * * * *' (UTC): RUNNING (default" in out


@pytest.mark.flow("exit_hook_flow.py")
@pytest.mark.parametrize("executor", ["threads", "multiprocess"])
def test_exit_hooks_run_once_after_success_failure_and_termination(workspace: Workspace, executor: str) -> None:
    """...and the notifications, once each for the success and the failure, none for the
    termination (ours announces itself; Dagster's executors through with_metaflow_run_end)."""
    hooks_server = WebhookServer()
    with hooks_server:
        _exit_hooks_and_notifications(workspace, executor, hooks_server)


def _exit_hooks_and_notifications(workspace: Workspace, executor: str, server: WebhookServer) -> None:
    slack = ("--notify-on-error", "--notify-on-success", "--notify-slack-webhook-url", server.url + "/slack")
    workspace.compile("--executor", executor, *slack)
    ok = workspace.metaflow("dagster", "trigger", "--wait", "--run-id-file", "ok")
    failed = workspace.metaflow("dagster", "trigger", "--fail", "true", "--wait", "--run-id-file", "failed", check=False)
    assert ok.returncode == 0 and failed.returncode != 0
    workspace.metaflow("dagster", "trigger", "--sleep", "120", "--run-id-file", "stopped")
    _wait("the step to start", lambda: len(list(workspace.dir.glob("pid-*"))) >= 3, 60)
    stopped = (workspace.dir / "stopped").read_text().strip()
    workspace.metaflow("dagster", "terminate", "--run-id", stopped)
    _wait("the hook after termination", lambda: (workspace.dir / f"hook-error-{stopped}").exists(), 60)

    ok_id, failed_id = ((workspace.dir / n).read_text().strip() for n in ("ok", "failed"))
    hooks = sorted(p.name for p in workspace.dir.glob("hook-*"))
    assert hooks == sorted([f"hook-success-{ok_id}", f"hook-error-{failed_id}", f"hook-error-{stopped}"])
    assert "successful=True" in (workspace.dir / f"hook-success-{ok_id}").read_text()
    # the hook's output is in the Dagster run's log
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
        run = next(r for r in instance.get_runs() if metaflow_run_id(r.run_id) == ok_id)
        messages = [e.message for e in instance.all_logs(run.run_id) if e.message]
    assert any("@exit_hook on_ok (on_success) ran" in m and "hook success saw" in m for m in messages)
    texts = sorted(body["text"] for _p, _h, body in server.received)
    flow = run.tags["metaflow/flow"]
    assert texts == sorted(
        [f":white_check_mark: Metaflow run _{flow}/{ok_id}_ succeeded!", f":rotating_light: Metaflow run _{flow}/{failed_id}_ failed!"]
    ), texts


@pytest.mark.flow("card_flow.py")
def test_cards_are_made_as_natively_and_linked_from_the_op(workspace: Workspace) -> None:
    workspace.compile()
    workspace.metaflow("dagster", "trigger", "--wait", "--run-id-file", "rid")
    mf_run_id = (workspace.dir / "rid").read_text().strip()
    got = workspace.metaflow("card", "get", f"{mf_run_id}/start/start", "card.html")
    card_html = (workspace.dir / "card.html").read_text()
    assert got.returncode == 0 and "<html" in card_html
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
        run = next(r for r in instance.get_runs() if metaflow_run_id(r.run_id) == mf_run_id)
        outputs = [
            e.dagster_event.event_specific_data
            for e in instance.all_logs(run.run_id)
            if e.dagster_event and e.dagster_event.event_type_value == "STEP_OUTPUT" and short_key(e.step_key) == "op_start"
        ]
    md = outputs[0].metadata
    assert open(md["card"].value).read() == card_html  # the op links the card `card get` returns
    assert md["card_view"].value.endswith(f"card view {mf_run_id}/start/start")
