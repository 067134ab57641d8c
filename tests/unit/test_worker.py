"""The run worker's identity and liveness: start time against pid reuse, heartbeat across hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


# a worker (the parent) that starts a watchdog-like child waiting on it, then exits after a
# moment; the child reports how long it waited and what it had imported meanwhile
_PARENT_AND_WATCHDOG = r"""
import os, subprocess, sys, time
from dagster_metaflow.runtime.worker import WorkerIdentity
child = '''
import sys, time
t0 = time.monotonic()
from dagster_metaflow.runtime.watchdog import wait_for_parent
wait_for_parent(sys.argv[1])
heavy = sorted(m for m in ("psutil", "dagster_metaflow.runtime.worker", "dagster") if m in sys.modules)
print(round(time.monotonic() - t0, 2), heavy, flush=True)
'''
me = WorkerIdentity.of(os.getpid())
subprocess.Popen([sys.executable, "-c", child, me.tag()], start_new_session=True)
time.sleep(1.5)
"""


def test_the_watchdog_waits_for_its_parent_worker_with_the_standard_library_only() -> None:
    """While the worker that started it lives, the watchdog waits on a pidfd of its parent,
    importing neither psutil nor the worker module nor Dagster; it returns when the worker
    exits."""
    # the child holds the captured stdout too: `run` returns once both have ended
    out = subprocess.run(
        [sys.executable, "-c", _PARENT_AND_WATCHDOG], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    waited, heavy = out.stdout.strip().split(" ", 1)
    assert 1.0 <= float(waited) < 10  # until its parent exited, 1.5 s after starting it
    assert heavy == "[]"


def test_a_watchdog_whose_worker_is_not_its_parent_does_not_wait() -> None:
    """Not our parent (or a malformed tag): nothing can be trusted from a bare pid, so it
    returns at once and `wait_for_exit` checks the worker's identity."""
    from dagster_metaflow.runtime.watchdog import wait_for_parent

    me = WorkerIdentity.of(os.getpid())
    assert me is not None
    for tag in (me.tag(), "garbage", "host/x/1.0", ""):
        t0 = time.monotonic()
        wait_for_parent(tag)
        assert time.monotonic() - t0 < 1.0
