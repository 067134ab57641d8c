"""The run worker's watchdog: a small process, in its own session, that outlives the worker.

When the worker dies without ending its run (kill -9, OOM killer, a crashed interpreter),
nothing else is there to clean up: its step processes keep running (the plain subprocess
path re-parents them to init; processes a step moved out of its process group escape the
zygote too) and the run stays STARTED in the instance. The watchdog waits on the worker
(pidfd, no polling), then
1. stops every process that carries the worker's identity (`DAGSTER_METAFLOW_WORKER`),
   SIGTERM then SIGKILL after a grace, so nothing records a task after the run is declared dead;
2. ends the run in the instance (FAILURE, or CANCELED if termination was asked) with an engine
   event saying the worker died and how to resume, unless the daemon's run monitoring will
   resume it with a new worker (our run launcher with `max_resume_run_attempts`).
A worker that ends normally leaves a finished run: the watchdog only sweeps and exits.

Started by the executor as `python -m dagster_metaflow.runtime.watchdog <identity> <run id>`;
the instance ref comes in the environment. It starts while the run's first steps do, on the
same cores: until the worker is gone it imports nothing beyond the standard library (~20 ms
of CPU to start instead of ~70 ms with psutil and the worker module).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .worker import WorkerIdentity

INSTANCE_REF_VAR = "DAGSTER_METAFLOW_INSTANCE_REF"


def start(
    identity_tag: str, run_id: str, instance_ref: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes] | None:
    """Start the watchdog of this worker (None if it could not be started)."""
    from .worker import WORKER_VAR

    child_env = dict(os.environ if env is None else env)
    child_env.pop(WORKER_VAR, None)  # never one of the processes it stops
    child_env[INSTANCE_REF_VAR] = instance_ref
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster_metaflow.runtime.watchdog", identity_tag, run_id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=child_env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        return None
    return proc


def _wait_on_pidfd(pid: int, of_it: Callable[[], bool]) -> bool:
    """Wait for `pid` to exit through a pidfd, if `of_it()` (checked after the fd is open)
    says the fd is of the process meant, not of a reused pid. False when the kernel gives
    no pidfd (nothing waited for)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return False
    try:
        if of_it():
            select.select([fd], [], [])
    finally:
        os.close(fd)
    return True


def wait_for_exit(identity: WorkerIdentity, poll: float = 0.5) -> None:
    """Return once the worker `identity` has exited (never waits on a reused pid)."""
    if _wait_on_pidfd(identity.pid, lambda: identity.process() is not None):
        return
    while identity.process() is not None:
        time.sleep(poll)


def after_death(identity_tag: str, run_id: str, instance_ref: str) -> None:
    """Stop the dead worker's processes, then end its run unless it ended or will resume."""
    from .worker import LOST, WorkerIdentity, end_lost_run, lost_message

    identity = WorkerIdentity.parse(identity_tag)
    if identity is None:
        return
    from dagster import DagsterInstance, deserialize_value

    with DagsterInstance.from_ref(cast(Any, deserialize_value(instance_ref))) as instance:
        run = instance.get_run_by_id(run_id)
        if run is None:
            return
        from .notify import announce_lost_run

        announced = []

        def announce(failing: Any, why: str) -> None:
            announced.append(True)
            announce_lost_run(instance, failing, why)

        if end_lost_run(instance, run, identity, announce):
            instance.report_engine_event(
                f"run worker lost (pid {identity.pid}); its step processes were stopped; "
                "dagster-daemon's run monitoring will resume the run with a new worker",
                run,
            )
            return
        # failed by another reader first (`trigger --wait`, `status`): announced here,
        # unless it was told already
        ended = None if announced else instance.get_run_by_id(run_id)
        if ended is not None and ended.status.value == "FAILURE":
            announce_lost_run(instance, ended, f"{LOST}: {lost_message(ended, identity)}")


def wait_for_parent(identity_tag: str) -> None:
    """Wait, with the standard library only, while the worker `identity_tag` that started us
    lives: it is our parent, so a pidfd opened while it still is refers to it and never to
    a reused pid. Returns at once when that cannot be told (`wait_for_exit` decides).
    The pid is read from the tag by `proc_start.tag_pid`, not by `WorkerIdentity.parse`:
    its module imports psutil."""
    from .proc_start import tag_pid

    pid = tag_pid(identity_tag)
    if pid is None:
        return
    _wait_on_pidfd(pid, lambda: os.getppid() == pid)  # still our parent: the fd is of it


def main(argv: list[str]) -> int:
    """`<identity> <run id>`: wait for the worker's end, then clean up after it if it died."""
    identity_tag, run_id = argv[0], argv[1]
    instance_ref = os.environ.pop(INSTANCE_REF_VAR, "")
    if not instance_ref:
        return 2
    wait_for_parent(identity_tag)
    from .worker import WorkerIdentity

    identity = WorkerIdentity.parse(identity_tag)
    if identity is None:
        return 2
    wait_for_exit(identity)  # at once for a worker that is gone; else its identity checked
    after_death(identity_tag, run_id, instance_ref)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
