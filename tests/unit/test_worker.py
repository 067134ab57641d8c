"""The run worker's identity and liveness: start time against pid reuse, heartbeat across hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from dagster import DagsterRun

from dagster_metaflow.run_launcher import MetaflowRunLauncher
from dagster_metaflow.runtime.proc_start import tag_pid
from dagster_metaflow.runtime.worker import (
    STALE_SECONDS,
    TAG_HEARTBEAT,
    TAG_WORKER,
    WORKER_VAR,
    WorkerIdentity,
    orphans,
    worker_alive,
)


def _run(tags: dict[str, str]) -> DagsterRun:
    return DagsterRun(job_name="j", run_id="11111111-2222-3333-4444-555555555555", tags=tags)


def test_identity_round_trips_and_rejects_garbage() -> None:
    me = WorkerIdentity.of(os.getpid())
    assert me is not None and me.since_boot is not None
    assert WorkerIdentity.parse(me.tag()) == WorkerIdentity(me.host, me.pid, round(me.started, 2), me.since_boot)
    assert WorkerIdentity.parse(me.tag()).tag() == me.tag()  # type: ignore[union-attr]  # orphans compare tags
    # a tag written before `since_boot` existed
    old = f"{me.host}/{me.pid}/{me.started:.2f}"
    assert WorkerIdentity.parse(old) == WorkerIdentity(me.host, me.pid, round(me.started, 2))
    for bad in (None, "", "host", "host/x/1.0", "host/1/y", "host/1/y/1@b", "host/-1/1.0", "host/0/1.0"):
        assert WorkerIdentity.parse(bad) is None
    for tag, pid in ((me.tag(), me.pid), (old, me.pid), ("host/x/1.0", None), ("garbage", None), ("", None)):
        assert tag_pid(tag) == pid, tag


def test_a_live_worker_stays_alive_when_the_clock_moves_its_start_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault seen on 2026-12-08: psutil's start time since the epoch adds /proc/stat's
    whole-second boot time, which moves by one second as NTP slews the clock; a reader then
    took a live run worker for dead and failed its run. Here the boot time moves by a second
    (and by an hour, a stepped clock) under a live worker and a live zygote-tracked process:
    both stay alive, the worker can still be signalled and its orphans found, and a reused
    pid is still told apart."""
    import psutil._pslinux as linux

    from dagster_metaflow.runtime.zygote_protocol import live_start_time

    base = linux.boot_time()  # one reading: the real one may move during the test
    monkeypatch.setattr(linux, "boot_time", lambda: base)
    child_env = dict(os.environ)
    proc = subprocess.Popen(["sleep", "60"])
    step = None
    try:
        worker = WorkerIdentity.of(proc.pid)
        assert worker is not None and worker.alive()
        # a process the worker started, carrying the tag the worker exported
        child_env[WORKER_VAR] = worker.tag()
        step = subprocess.Popen(["sleep", "60"], env=child_env)
        before = live_start_time(proc.pid)
        run = _run({TAG_WORKER: worker.tag()})
        for shift in (1.0, -1.0, 3600.0):
            monkeypatch.setattr(linux, "boot_time", lambda s=shift: base + s)
            assert abs(psutil.Process(proc.pid).create_time() - worker.started - shift) < 0.05
            assert worker.alive(), shift
            assert worker_alive(run, WorkerIdentity.parse(worker.tag())) is True  # type: ignore[arg-type]
            assert live_start_time(proc.pid) == before
            # the reading the run tag holds may be another one than the exported tag's
            moved = WorkerIdentity.of(proc.pid)
            assert moved is not None and moved.tag() != worker.tag()
            assert [p.pid for p in orphans(moved)] == [step.pid], shift
            # what the comparison by start time since the epoch (tags without since_boot) says
            assert WorkerIdentity(worker.host, worker.pid, worker.started).alive() is False
        ticks, boot = worker.since_boot.split("@")  # type: ignore[union-attr]
        for other in (f"{int(ticks) + 1}@{boot}", f"{ticks}@another-boot"):
            reused = WorkerIdentity(worker.host, worker.pid, worker.started, other)
            assert reused.alive() is False and not reused.signal(signal.SIGKILL), other
            assert orphans(reused) == []
        assert worker.signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        for p in (proc, step):
            if p is not None:
                p.kill()
                p.wait()
    assert worker.alive() is False and live_start_time(proc.pid) is None


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
    ticks, boot = me.since_boot.split("@")  # type: ignore[union-attr]
    for other in (f"{int(ticks) - 1}@{boot}", f"{ticks}@another-boot"):  # a reused pid, a reboot
        gone = WorkerIdentity(me.host, me.pid, me.started, other)
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


def test_a_zombie_has_no_start_and_is_not_alive() -> None:
    """A worker that exited but was not reaped yet is dead to every reader."""
    from dagster_metaflow.runtime.proc_start import start_ticks

    proc = subprocess.Popen(["sleep", "60"])
    try:
        worker = WorkerIdentity.of(proc.pid)
        assert worker is not None and worker.since_boot is not None and worker.alive()
        proc.kill()
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert start_ticks(proc.pid) is None
        assert worker.alive() is False
    finally:
        proc.wait()
