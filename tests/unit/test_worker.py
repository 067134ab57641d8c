"""The run worker's identity and liveness: start time against pid reuse, heartbeat across hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from dagster import DagsterRun

from dagster_metaflow.run_launcher import MetaflowRunLauncher
from dagster_metaflow.runtime.worker import (
    STALE_SECONDS,
    TAG_HEARTBEAT,
    TAG_WORKER,
    WorkerIdentity,
    worker_alive,
)


def _run(tags: dict[str, str]) -> DagsterRun:
    return DagsterRun(job_name="j", run_id="11111111-2222-3333-4444-555555555555", tags=tags)


def test_identity_round_trips_and_rejects_garbage() -> None:
    me = WorkerIdentity.of(os.getpid())
    assert me is not None and WorkerIdentity.parse(me.tag()) == WorkerIdentity(me.host, me.pid, round(me.started, 2))
    for bad in (None, "", "host", "host/x/1.0", "host/1/y"):
        assert WorkerIdentity.parse(bad) is None


def test_a_reused_pid_is_neither_alive_nor_signalled() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        real = WorkerIdentity.of(proc.pid)
        assert real is not None and real.alive()
        stale = WorkerIdentity(real.host, real.pid, real.started - 500)
        assert stale.alive() is False and not stale.signal(signal.SIGKILL)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert real.alive() is False


def test_a_worker_on_another_host_is_judged_by_its_heartbeat() -> None:
    remote = WorkerIdentity("elsewhere.example", 4242, 1.0).tag()
    launcher = MetaflowRunLauncher()
    unknown = _run({TAG_WORKER: remote})
    assert worker_alive(unknown, WorkerIdentity.parse(remote)) is None  # type: ignore[arg-type]
    assert launcher.check_run_worker_health(unknown).status.value == "RUNNING"
    fresh = _run({TAG_WORKER: remote, TAG_HEARTBEAT: f"{time.time():.0f}"})
    assert launcher.check_run_worker_health(fresh).status.value == "RUNNING"
    silent = _run({TAG_WORKER: remote, TAG_HEARTBEAT: f"{time.time() - STALE_SECONDS - 5:.0f}"})
    result = launcher.check_run_worker_health(silent)
    assert result.status.value == "FAILED" and "no heartbeat" in (result.msg or "")


def test_health_check_of_a_local_worker() -> None:
    launcher = MetaflowRunLauncher()
    me = WorkerIdentity.of(os.getpid())
    assert me is not None
    assert launcher.check_run_worker_health(_run({TAG_WORKER: me.tag()})).status.value == "RUNNING"
    gone = WorkerIdentity(me.host, me.pid, me.started - 500)
    assert launcher.check_run_worker_health(_run({TAG_WORKER: gone.tag()})).status.value == "FAILED"
    assert launcher.check_run_worker_health(_run({})).status.value == "RUNNING"  # not recorded yet
