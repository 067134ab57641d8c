"""Infrastructure faults around the run worker, injected for real: kill -9 of the worker
(zygote and plain-subprocess paths, with and without its watchdog), pid reuse, terminate of
a wide foreach, and the daemon resuming a run whose worker died. Every test checks final
states, artifacts and the process table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Workspace, chunked_env, survivors, wait_for
from services import WebhookServer, dagster_daemon

from dagster_metaflow.runtime import metaflow_run_id
from dagster_metaflow.runtime.worker import TAG_WORKER, WORKER_VAR, WorkerIdentity

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def _instance(ws: Workspace) -> Any:
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(ws.dagster_home))


def _run(ws: Workspace, run_id: str | None = None) -> Any:
    with _instance(ws) as instance:
        return instance.get_run_by_id(run_id) if run_id else instance.get_runs(limit=1)[0]


def _markers(ws: Workspace, attempt: int, count: int, timeout: float = 120) -> list[int]:
    """pids (step process and its escaped grandchild) of `count` held bodies at `attempt`."""

    def found() -> list[Path]:
        got = sorted(ws.dir.glob(f"body-*-{attempt}"))
        return got if len(got) >= count else []

    files = wait_for(f"{count} held body tasks (attempt {attempt})", found, timeout)
    return [int(p) for f in files for p in f.read_text().split()]


def _worker(ws: Workspace, run_id: str | None = None) -> WorkerIdentity:
    def recorded() -> WorkerIdentity | None:
        return WorkerIdentity.parse(_run(ws, run_id).tags.get(TAG_WORKER))

    identity = wait_for("the run worker's identity tag", recorded, 60)
    assert identity.alive(), identity
    return identity


def _carriers(identity: WorkerIdentity) -> list[int]:
    """Processes that still carry the worker's identity (its descendants)."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(WORKER_VAR) == identity.tag() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return out


def _watchdog(identity: WorkerIdentity) -> int | None:
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "dagster_metaflow.runtime.watchdog" in cmd and identity.tag() in cmd:
            return p.pid
    return None


def _body_tasks(pathspec: str) -> dict[str, Any]:
    from metaflow import Run, namespace

    namespace(None)
    return {t.id: t for t in Run(pathspec)["body"].tasks()}


@pytest.mark.flow("fault_flow.py")
@pytest.mark.parametrize("fork", ["1", "0"], ids=["zygote", "subprocess"])
def test_killed_worker_stops_every_process_and_fails_the_run(
    workspace: Workspace, fork: str, stack: ExitStack
) -> None:
    """kill -9 of the run worker mid-foreach: the watchdog stops every step process and the
    escaped SIGTERM-ignoring grandchildren within 30 s, the run is FAILURE with an engine
    event, `trigger --wait` ends saying how to resume, and no held task ever succeeds; the
    watchdog announces the failed run (--notify-on-error), once."""
    ws = workspace
    hooks = stack.enter_context(WebhookServer())
    ws.compile("--notify-on-error", "--notify-slack-webhook-url", hooks.url + "/slack")
    env = dict(os.environ, DAGSTER_HOME=str(ws.dagster_home), DAGSTER_METAFLOW_FORK=fork)
    follower = subprocess.Popen(
        [sys.executable, ws.flow.name, "dagster", "trigger", "--marker-dir", str(ws.dir), "--run-id-file", "rid", "--wait"],
        cwd=ws.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        pids = _markers(ws, 0, 3)
        # `ps` shows the step's command on both paths (the zygote's children retitle themselves)
        cmdline = " ".join(psutil.Process(pids[0]).cmdline())
        assert "fault_flow.py" in cmdline and " step body " in cmdline, cmdline
        identity = _worker(ws)
        watchdog = _watchdog(identity)
        assert watchdog is not None, "no watchdog beside the run worker"
        os.kill(identity.pid, signal.SIGKILL)
        assert survivors(pids, within=30) == [], "step processes outlived their run worker"
        assert _carriers(identity) == []
        _, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode != 0
    assert "FAILURE" in err and "dagster resume --origin-run-id" in err, err[-2000:]
    run = _run(ws)
    assert run.status.value == "FAILURE"
    messages = [e.message for e in ws.dagster_events(run.run_id)]
    assert any("run worker lost" in (m or "") for m in messages), messages[-5:]
    mf_run = metaflow_run_id(run.run_id)
    status = ws.metaflow("dagster", "status", "--run-id", mf_run)
    assert "FAILED" in status.stdout and f"dagster resume --origin-run-id {mf_run}" in status.stderr
    assert mf_run not in ws.metaflow("dagster", "list-runs", "--running").stdout
    assert survivors([watchdog], within=10) == []
    assert hooks.paths() == ["/slack"], hooks.received
    text = hooks.received[0][2]["text"] + json.dumps(hooks.received[0][2]["blocks"])
    assert f"FaultFlow/{mf_run}_ failed!" in text and "run worker lost" in text, text
    ws.dir.joinpath("release").write_text("")  # nothing may pick up the hold now
    time.sleep(1)
    from metaflow import Run

    pathspec = f"FaultFlow/{mf_run}"
    assert not Run(pathspec, _namespace_check=False).successful
    held = [t for tid, t in _body_tasks(pathspec).items() if not tid.endswith("-0")]
    assert held and not any(t.successful for t in held)


@pytest.mark.flow("fault_flow.py")
def test_worker_that_exits_on_an_error_mid_foreach_leaves_no_process(workspace: Workspace) -> None:
    """The run worker ends on a Python error (not a signal) while steps run: here its run's
    event database vanishes, so the next event it writes raises. Its exit handlers run, and
    nothing it started may outlive it: the held steps and their escaped grandchildren are
    stopped within 30 s (by its step zygote as it closes, and by its watchdog;
    tests/unit/test_zygote.py checks the zygote alone), and the run ends FAILED once its
    database is back. Zygote path only: with plain subprocesses an ending worker's steps
    are its watchdog's, as when it is killed (`test_killed_worker_...[subprocess]`)."""
    ws = workspace
    ws.compile()
    ws.metaflow("dagster", "trigger", "--marker-dir", str(ws.dir), "--run-id-file", "rid")
    pids = _markers(ws, 0, 3)
    identity = _worker(ws)
    run_id = _run(ws).run_id
    events_db = ws.dagster_home / "history" / "runs" / f"{run_id}.db"
    assert events_db.is_file(), sorted(events_db.parent.iterdir())
    aside = events_db.with_suffix(".away")
    events_db.rename(aside)
    events_db.mkdir()  # opened again by the next write (a new file identity): it fails
    try:
        (ws.dir / "release-1").write_text("")  # body 1 ends: its events are written
        assert survivors([identity.pid], within=60) == [], "the worker did not end on the error"
        assert survivors(pids, within=30) == [], "steps outlived a worker that ended on an error"
        assert _carriers(identity) == []
    finally:
        events_db.rmdir()
        aside.rename(events_db)
        (ws.dir / "release").write_text("")  # a failed check leaves nothing held
    log = (ws.dagster_home / "storage" / "dagster_metaflow_workers" / f"{run_id}.log").read_text()
    assert "Traceback" in log and "unable to open database file" in log, log[-3000:]
    mf_run = (ws.dir / "rid").read_text().strip()
    status = ws.metaflow("dagster", "status", "--run-id", mf_run)
    assert "FAILED" in status.stdout, status.stdout + status.stderr


@pytest.mark.flow("fault_flow.py")
def test_dead_worker_and_watchdog_are_noticed_by_status_and_the_deployer(workspace: Workspace) -> None:
    """Worker and watchdog both killed (the machine lost them): the next `status`, and the
    Deployer's TriggeredRun, notice at once, stop the orphans and end the run."""
    ws = workspace
    ws.compile()
    ws.metaflow("dagster", "trigger", "--marker-dir", str(ws.dir), "--run-id-file", "rid", DAGSTER_METAFLOW_FORK="0")
    pids = _markers(ws, 0, 3)
    identity = _worker(ws)
    watchdog = _watchdog(identity)
    assert watchdog is not None
    os.kill(watchdog, signal.SIGKILL)
    os.kill(identity.pid, signal.SIGKILL)
    assert survivors([identity.pid], within=10) == []
    assert survivors(pids, within=1), "nothing left to clean: the test would prove nothing"
    mf_run = (ws.dir / "rid").read_text().strip()
    # the Deployer sees it as the CLI does (same instance check), in another process
    code = (
        "from metaflow import Deployer\n"
        "from dagster_metaflow.deployer_objects import DagsterDeployedFlow\n"
        f"r = DagsterDeployedFlow.get_triggered_run('FaultFlow', {mf_run!r})\n"
        "r.wait_for_completion(timeout=60)\n"
        "print('STATUS', r.status, r.is_running)\n"
    )
    t0 = time.monotonic()
    out = ws.run(sys.executable, "-c", code).stdout
    assert "STATUS FAILED False" in out, out
    assert time.monotonic() - t0 < 60
    assert survivors(pids, within=5) == [], "the orphans of a dead worker were left running"
    assert "FAILED" in ws.metaflow("dagster", "status", "--run-id", mf_run).stdout


def test_terminate_never_signals_a_process_that_reuses_the_worker_pid(tmp_path: Path) -> None:
    """A run whose recorded worker pid now belongs to an unrelated process: `terminate`
    leaves that process alone and ends the run."""
    from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

    from dagster_metaflow import runs

    bystander = subprocess.Popen(["sleep", "120"])
    try:
        me = WorkerIdentity.of(bystander.pid)
        assert me is not None
        stale = WorkerIdentity(me.host, me.pid, me.started - 1000)  # same pid, another process
        (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with DagsterInstance.from_config(str(tmp_path)) as instance:
            run = instance.add_run(
                DagsterRun(job_name="j", run_id="0" * 8 + "-0000-0000-0000-" + "0" * 12, status=DagsterRunStatus.STARTED)
            )
            instance.add_run_tags(run.run_id, {TAG_WORKER: stale.tag()})
            assert stale.alive() is False and not stale.signal(signal.SIGKILL)
            assert runs.terminate(instance, run.run_id, wait=5)
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELED  # type: ignore[union-attr]
        assert bystander.poll() is None, "terminate killed an unrelated process"
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.flow("fault_flow.py")
@pytest.mark.parametrize("chunks", [False, True], ids=["per-task", "chunked"])
def test_terminate_a_64_wide_foreach_leaves_no_process(workspace: Workspace, chunks: bool) -> None:
    """Chunked (16 chunks of 4, each holding in its first held task): the interrupted chunk
    ops start none of their remaining tasks."""
    ws = workspace
    ws.compile()
    env = chunked_env(4) if chunks else {}
    ws.metaflow("dagster", "trigger", "--marker-dir", str(ws.dir), "--width", "64", "--run-id-file", "rid", **env)
    pids = _markers(ws, 0, 16 if chunks else 12)  # chunked: every chunk holds
    identity = _worker(ws)
    mf_run = (ws.dir / "rid").read_text().strip()
    ws.metaflow("dagster", "terminate", "--run-id", mf_run)
    assert _run(ws).status.value == "CANCELED"
    assert survivors(pids, within=30) == []
    assert survivors([identity.pid], within=30) == []
    assert _carriers(identity) == []
    if chunks:
        time.sleep(2)
        held = sorted(p.name for p in ws.dir.glob("body-*-0"))
        assert len(held) == 16, held  # one per chunk: none started after the terminate
        assert "chunk_body" in " ".join(ws.step_keys(_run(ws).run_id, "STEP_START"))


DAEMON_YAML = """telemetry:
  enabled: false
run_launcher:
  module: dagster_metaflow.run_launcher
  class: MetaflowRunLauncher
run_monitoring:
  enabled: true
  poll_interval_seconds: 2
  max_resume_run_attempts: 2
"""


# `trigger` only queues the run; the daemon's run queue launches it (every second)
QUEUED_YAML = """run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
"""


# The runs the daemon resumes. Top level, a 4-wide foreach, one op per task: bodies 1-3
# hold. Nested, two outer items of three bodies each, each outer item's bodies one chunk
# (DAGSTER_METAFLOW_CHUNK_SIZE=3): each chunk runs body-<o>-0, holds in body-<o>-1, and has
# not reached body-<o>-2 when the worker is killed (the top-level chunked path runs the
# same chunk op; test_terminate_a_64_wide_foreach_leaves_no_process terminates it).
CHUNKED = chunked_env(3)


@dataclass(frozen=True)
class _Resumed:
    flow: str
    chunked: bool
    done_before: tuple[str, ...]  # body tasks finished when the worker is killed
    held: tuple[str, ...]  # body tasks held then (run again as attempt 1)
    not_started: tuple[str, ...]  # body tasks first started by the new worker (attempt 0)
    chunk_keys: tuple[str, ...]  # chunk ops the resumed run completes
    total_step: str = "join"  # the step whose `total` sums every body's value...
    total: int = 12  # ...as in an uninterrupted run


_RESUMED = {
    "per-task": _Resumed("FaultFlow", False, ("body-0",), ("body-1", "body-2", "body-3"), (), ()),
    "chunked-nested": _Resumed(
        "NestedFaultFlow",
        True,
        ("body-0-0", "body-1-0"),
        ("body-0-1", "body-1-1"),
        ("body-0-2", "body-1-2"),
        ("chunk_body[tasks_0_to_2_in_0]", "chunk_body[tasks_0_to_2_in_1]"),
        "outer_join",
        24,
    ),
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(_RESUMED["per-task"], marks=pytest.mark.flow("fault_flow.py"), id="per-task"),
        pytest.param(_RESUMED["chunked-nested"], marks=pytest.mark.flow("nested_fault_flow.py"), id="chunked-nested"),
    ],
)
def test_daemon_resumes_a_run_it_launched_whose_worker_died_and_the_run_outlives_the_daemon(
    workspace: Workspace, case: _Resumed
) -> None:
    """A run the daemon launched (`trigger` queued it; the daemon's run queue launched it
    through MetaflowRunLauncher, as it does a scheduled run's, without waiting for a
    schedule's next minute); kill -9 of its worker mid-foreach: with
    `max_resume_run_attempts`, the daemon resumes the SAME run (finished tasks not run again,
    killed ones as new attempts); then kill -9 of the daemon itself: the new worker (its own
    session) goes on, and the run ends SUCCESS with the artifacts of an uninterrupted run and
    nothing left in the process table. Nested in chunks: each resumed chunk op skips the task
    that succeeded, retries the one that was killed and starts the one it had not reached."""
    ws = workspace
    (ws.dagster_home / "dagster.yaml").write_text(DAEMON_YAML + QUEUED_YAML)
    ws.compile()
    held = len(case.held)
    with dagster_daemon(ws, **(CHUNKED if case.chunked else {})) as daemon:
        res = ws.metaflow("dagster", "trigger", "--marker-dir", str(ws.dir))
        assert "queued: dagster-daemon" in res.stderr, res.stderr[-2000:]
        pids = _markers(ws, 0, held, timeout=150)
        mf_run = wait_for("the holding run", lambda: (ws.dir / "holding-run").read_text().strip(), 10)
        run_id = _dagster_run_id(ws, mf_run)
        first = _worker(ws, run_id)
        # the launcher forked the worker from its worker zygote (Dagster preloaded), or with
        # DAGSTER_METAFLOW_FORK=0 started `python -m dagster_metaflow.run_worker`; in a
        # session of its own either way
        import psutil

        from dagster_metaflow.runtime.zygote import fork_enabled

        parent = psutil.Process(first.pid).parent()
        assert parent is not None and os.getsid(first.pid) == first.pid
        if fork_enabled():
            assert "zygote_server import serve" in " ".join(parent.cmdline())
            # (its command line ends with the mode and the pid of the process that started it)
            assert parent.cmdline()[-2] == "worker"
        else:
            assert psutil.Process(first.pid).cmdline()[2:4] == ["dagster_metaflow.run_worker", "execute_run"]
        pathspec = f"{case.flow}/{mf_run}"
        done_before = {tid: t.finished_at for tid, t in _body_tasks(pathspec).items() if t.successful}
        assert sorted(done_before) == sorted(case.done_before), done_before
        os.kill(first.pid, signal.SIGKILL)
        assert survivors(pids, within=30) == []
        resumed_pids = _markers(ws, 1, held, timeout=150)  # the new worker's attempts hold too
        second = wait_for("a new worker", lambda: (w := _worker(ws, run_id)) != first and w, 30)
        assert psutil.Process(second.pid).parent() == parent  # resume_run: the same zygote
        if not fork_enabled():
            assert psutil.Process(second.pid).cmdline()[2:4] == ["dagster_metaflow.run_worker", "resume_run"]
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=30)
    ws.dir.joinpath("release").write_text("")
    run = wait_for("the resumed run to end", lambda: _finished(ws, run_id), 180)
    assert run.status.value == "SUCCESS", [e.message for e in ws.dagster_events(run.run_id)][-15:]
    assert any("Resuming the run in a new worker" in (e.message or "") for e in ws.dagster_events(run_id))
    from metaflow import Run

    mf = Run(pathspec, _namespace_check=False)
    assert mf.successful and mf[case.total_step].task["total"].data == case.total
    tasks = _body_tasks(pathspec)
    assert sorted(tasks) == sorted(case.done_before + case.held + case.not_started)
    for tid in case.done_before:  # not run again
        assert tasks[tid].finished_at == done_before[tid] and tasks[tid].current_attempt == 0, tid
    for tid in case.held + case.not_started:
        attempt = 1 if tid in case.held else 0
        assert tasks[tid].current_attempt == attempt and tasks[tid].successful, tid
    succeeded = ws.step_keys(run_id, "STEP_SUCCESS")
    for key in case.chunk_keys:
        assert key in succeeded, (key, succeeded)
    assert survivors([first.pid, second.pid, parent.pid, *resumed_pids], within=30) == []
    assert _carriers(first) == [] and _carriers(second) == []


def _dagster_run_id(ws: Workspace, mf_run: str) -> str:
    with _instance(ws) as instance:
        return next(r.run_id for r in instance.get_runs() if metaflow_run_id(r.run_id) == mf_run)


def _finished(ws: Workspace, run_id: str | None = None) -> Any:
    run = _run(ws, run_id)
    return run if run.is_finished else None


@pytest.mark.flow("step_kill_flow.py")
@pytest.mark.parametrize("with_retry", [True, False], ids=["retry", "no-retry"])
def test_killed_step_is_retried_or_fails_the_run(workspace: Workspace, with_retry: bool) -> None:
    """kill -9 of a step process: with @retry the next attempt runs and the run succeeds;
    without, the run fails naming the step; the worker and every process end either way."""
    ws = workspace
    if not with_retry:
        ws.flow.write_text(ws.flow.read_text().replace("@retry(times=1, minutes_between_retries=0)", ""))
    ws.compile()
    ws.metaflow("dagster", "trigger", "--marker-dir", str(ws.dir), "--run-id-file", "rid")
    step_pid = int(wait_for("the step to start", lambda: (ws.dir / "work").exists() and (ws.dir / "work").read_text(), 120))
    identity = _worker(ws)
    os.kill(step_pid, signal.SIGKILL)
    run = wait_for("the run to end", lambda: _finished(ws), 180)
    mf_run = (ws.dir / "rid").read_text().strip()
    from metaflow import Run

    mf = Run(f"StepKillFlow/{mf_run}", _namespace_check=False)
    if with_retry:
        assert run.status.value == "SUCCESS"
        assert mf.successful and mf["work"].task["attempt_seen"].data == 1
    else:
        assert run.status.value == "FAILURE"
        failures = [e.message for e in ws.dagster_events(run.run_id) if e.dagster_event and e.dagster_event.is_step_failure]
        assert failures and "op_work" in (failures[0] or ""), failures
        assert not mf.successful
    assert survivors([identity.pid], within=30) == []
    assert _carriers(identity) == []


@pytest.mark.flow("params_flow.py")
def test_twenty_concurrent_triggers_keep_their_parameters(workspace: Workspace) -> None:
    """20 `trigger`s at once, each with its own parameter value: 20 runs, each SUCCESS with
    its own value, and no process left behind."""
    ws = workspace
    ws.compile()
    env = dict(os.environ, DAGSTER_HOME=str(ws.dagster_home))
    procs = [
        subprocess.Popen(
            [sys.executable, ws.flow.name, "dagster", "trigger", "--needed", str(i), "--run-id-file", f"rid{i}"],
            cwd=ws.dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for i in range(20)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    ids = {i: (ws.dir / f"rid{i}").read_text().strip() for i in range(20)}
    assert len(set(ids.values())) == 20

    def all_done() -> list[Any] | None:
        with _instance(ws) as instance:
            runs = instance.get_runs()
        return runs if len(runs) == 20 and all(r.is_finished for r in runs) else None

    runs = wait_for("20 runs to end", all_done, 400)
    assert {r.status.value for r in runs} == {"SUCCESS"}
    from metaflow import Run

    for i, rid in ids.items():
        assert Run(f"ParamsFlow/{rid}", _namespace_check=False)["start"].task["seen"].data["needed"] == i
    workers = [WorkerIdentity.parse(r.tags.get(TAG_WORKER)) for r in runs]
    assert survivors([w.pid for w in workers if w is not None], within=30) == []


@pytest.mark.flow("fault_flow.py")
def test_the_daemon_announces_a_run_nobody_else_could_and_no_run_twice(workspace: Workspace) -> None:
    """The machine lost the run worker and its watchdog: dagster-daemon's run monitoring
    stops the steps they left, fails the run (no resume attempts left), and the
    deployment's run-failure sensor tells
    incident.io (the key from the daemon's environment, env:NAME). A run that succeeds is
    announced by its worker; the success sensor, ticking after it, does not announce it again."""
    ws = workspace
    no_resume = DAEMON_YAML.replace("max_resume_run_attempts: 2", "max_resume_run_attempts: 0")
    (ws.dagster_home / "dagster.yaml").write_text(no_resume + QUEUED_YAML)
    with WebhookServer() as hooks:
        ws.compile(
            "--notify-on-error", "--notify-on-success", "--notify-incident-io-api-key", "env:IIO_KEY",
            "--incident-io-alert-source-config-id", "SRC1", "--incident-io-metadata", "team=ml",
        )
        with dagster_daemon(ws, **hooks.env(), IIO_KEY="secret-1"):
            ws.metaflow("dagster", "trigger", "--marker-dir", str(ws.dir))
            pids = _markers(ws, 0, 3, timeout=150)
            mf_run = wait_for("the holding run", lambda: (ws.dir / "holding-run").read_text().strip(), 10)
            run_id = _dagster_run_id(ws, mf_run)
            identity = _worker(ws, run_id)
            watchdog = _watchdog(identity)
            assert watchdog is not None
            os.kill(watchdog, signal.SIGKILL)
            os.kill(identity.pid, signal.SIGKILL)
            run = wait_for("the daemon to fail the run", lambda: _finished(ws, run_id), 120)
            assert run.status.value == "FAILURE"
            # the daemon's health check stopped what the dead worker had started
            assert survivors(pids, within=5) == [], "the lost worker's steps were left running"
            wait_for("the failure's notification", lambda: hooks.received, 60)
            _sensor_ticked(ws, "FaultFlow_notify_on_error", after=time.time())  # still one message
            assert hooks.paths() == ["/incident/v2/alert_events/http/SRC1"], hooks.received
            _path, headers, alert = hooks.received[0]
            assert headers["Authorization"] == "Bearer secret-1"
            assert alert["title"] == "Flow FaultFlow has failed." and alert["deduplication_key"] == f"FaultFlow/{mf_run}"
            assert alert["metadata"]["team"] == "ml" and alert["metadata"]["run_status"] == "failed"
            assert _run(ws, run_id).tags[".dagster/metaflow-notified"] == f"{run_id}:failed:incident_io"
            out = ws.metaflow("dagster", "describe").stdout
            assert "notify:      on error and success: incident.io (FaultFlow_notify_on_error: RUNNING" in out, out
            assert "events out:  metaflow.FaultFlow.end when a run succeeds" in out, out
            # a successful run: its worker announces it, the sensor does not again
            ws.dir.joinpath("release").write_text("")
            ws.metaflow("dagster", "trigger", "--marker-dir", str(ws.dir), "--run-id-file", "ok")
            ok_run = wait_for("the run id", lambda: (ws.dir / "ok").read_text().strip(), 30)
            ok = wait_for("the second run to end", lambda: _finished(ws, _dagster_run_id(ws, ok_run)), 150)
            assert ok.status.value == "SUCCESS"
            _sensor_ticked(ws, "FaultFlow_notify_on_success", after=time.time())
            assert len(hooks.received) == 2, hooks.received
            assert hooks.received[1][2]["title"] == "Flow FaultFlow has succeeded."
            assert hooks.received[1][2]["deduplication_key"] == f"FaultFlow/{ok_run}"


def _sensor_ticked(ws: Workspace, name: str, after: float, timeout: float = 60) -> None:
    """Until the daemon has finished a tick of the sensor `name` that started after `after`."""
    from dagster._core.scheduler.instigation import TickStatus

    def ticked() -> bool:
        with _instance(ws) as instance:
            for state in instance.all_instigator_state():
                if state.name == name:
                    done = [TickStatus.SUCCESS, TickStatus.SKIPPED, TickStatus.FAILURE]
                    ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after, statuses=done)
                    return bool(ticks)
        return False

    wait_for(f"a tick of {name}", ticked, timeout)
