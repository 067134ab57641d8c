"""Runs dagster-daemon launches through `MetaflowRunLauncher` (README, "Production")."""

from __future__ import annotations

import os

import psutil
import pytest
from conftest import Workspace, survivors, wait_for
from services import dagster_daemon

from dagster_metaflow.runtime.worker import TAG_WORKER, WorkerIdentity

pytestmark = pytest.mark.e2e

LAUNCHER_AND_QUEUE = """telemetry:
  enabled: false
run_launcher:
  module: dagster_metaflow.run_launcher
  class: MetaflowRunLauncher
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
"""


def _ours(ws: Workspace) -> list[int]:
    """Processes whose environment names this workspace (daemon, zygotes, workers, steps)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and str(ws.dir) in " ".join(p.environ().values()):
                found.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return [p for p in found if p != os.getpid()]


def _spares(daemon: int) -> list[int]:
    """The step zygotes among the daemon's descendants (no run is going on)."""
    found = []
    for p in psutil.Process(daemon).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "dagster_metaflow.runtime.zygote_server" in cmd and " step " in cmd:
            found.append(p.pid)
    return found


@pytest.mark.flow("zygote_flow.py")
@pytest.mark.parametrize("fork", ["1", "0"], ids=["zygote", "subprocess"])
def test_the_daemon_s_runs_of_a_job_find_its_step_zygote_ready(
    workspace: Workspace, fork: str
) -> None:
    """The worker zygote of the daemon's launcher keeps a spare step zygote for a job's
    next run, started when a run of that job ends: the first run's steps fork from a zygote
    started for that run, the second run's from one started before that run was created.
    With forking off, each run's steps are children of its own worker. Once the daemon
    stops, none of these processes is left."""
    from dagster import DagsterInstance
    from metaflow import Run, namespace

    ws = workspace
    (ws.dagster_home / "dagster.yaml").write_text(LAUNCHER_AND_QUEUE)
    ws.compile()
    with dagster_daemon(ws, DAGSTER_METAFLOW_FORK=fork) as daemon:
        for name in ("first", "second"):
            out = ws.metaflow("dagster", "trigger", "--wait", "--run-id-file", name, timeout=180)
            assert "queued: dagster-daemon" in out.stdout + out.stderr
        if fork == "1":  # the spare the second run's worker asked for as it ended; the
            # zygote that served the second run was sent SIGTERM a moment before and may
            # still be exiting
            wait_for("one spare for a third run", lambda: len(_spares(daemon.pid)) == 1, 20)
        # with the worker zygote, the code server
        started_pids = [p.pid for p in psutil.Process(daemon.pid).children(recursive=True)]
        assert len(_spares(daemon.pid)) == (1 if fork == "1" else 0)
    assert survivors(started_pids, within=20) == [], "a process the daemon started outlived it"
    namespace(None)
    with DagsterInstance.from_config(str(ws.dagster_home)) as instance:
        runs = {r.tags["metaflow/pathspec"]: r for r in instance.get_runs()}
    seen = {}
    for name in ("first", "second"):
        pathspec = f"ZygoteFlow/{(ws.dir / name).read_text().strip()}"
        data = Run(pathspec)["start"].task.data
        worker = WorkerIdentity.parse(runs[pathspec].tags[TAG_WORKER])
        assert worker is not None and worker.since_boot is not None
        # start times in clock ticks since boot, as both were read
        worker_ticks = int(worker.since_boot.split("@")[0])
        seen[name] = (data.forked_from, worker.pid, data.forked_from_started - worker_ticks)
    if fork == "1":
        assert seen["first"][2] >= 0, seen  # started by the first run's worker
        assert seen["second"][2] < 0, seen  # ready before the second run's worker: the spare
        assert seen["first"][0] != seen["second"][0]
    else:
        assert all(forked_from == worker for forked_from, worker, _ in seen.values()), seen
    wait_for("no process of this workspace once the daemon stopped", lambda: not _ours(ws), 20)
