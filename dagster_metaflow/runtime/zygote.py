"""Start step commands by forking a process that has already imported Metaflow.

`python flow.py step ...` spends most of its ~0.8 s importing Metaflow. A zygote is a
single-threaded helper process that imports Metaflow once and then, per request, forks a
child that becomes exactly that command: its own session/process group, the given
stdout/stderr pipes, working directory, environment and `sys.argv`, and the flow file run
as `__main__` (so Metaflow's CLI runs as usual). Exit statuses are reported back over the
request's connection.

Metaflow reads its configuration from the environment at import time, so a zygote only
serves commands whose interpreter-relevant environment (`METAFLOW_*`, `PYTHON*`) equals the
one it was started with; `ZygotePool` keeps one per such environment. Anything unexpected
(start-up failure, a dead zygote) falls back to a plain subprocess. Set
`DAGSTER_METAFLOW_FORK=0` to always use plain subprocesses.

A *worker* zygote (`WORKER_POOL`, used by `MetaflowRunLauncher` in dagster-daemon and the
webserver) preloads Dagster instead and forks `python -m dagster_metaflow.run_worker ...`
run workers: those are detached (their own sessions) and outlive the zygote and its parent.
At the end of its run a worker asks it for a *spare* step zygote of its job
(`request_spare`); the next run of that job gets it, ready, instead of waiting ~0.3 s for
its own (`zygote_server._Spares`).

This module is the client side: the pool, a zygote's handle, and what a run worker asks of
the worker zygote that forked it. The zygote process itself is `zygote_server`; both speak
`zygote_protocol`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any

from .switches import FORK_VAR, switch
from .zygote_protocol import (
    RUN_WORKER_ENV,
    SOCKET_DIR_PREFIX,
    STEP,
    TOKEN_SLOT,
    TOKEN_VAR,
    WORKER,
    ZygoteUnavailable,
    command_request,
    live_start_time,
    remove_socket,
    send_request,
)

__all__ = [
    "POOL",
    "RUN_WORKER_ENV",
    "STEP",
    "WORKER",
    "WORKER_POOL",
    "ForkedProcess",
    "Zygote",
    "ZygotePool",
    "ZygoteUnavailable",
    "fork_enabled",
    "request_spare",
    "spawn_step_process",
    "worker_job_key",
    "zygote_env",
]

START_TIMEOUT = 30.0
# how long after a zygote's start began (~0.25 s on an idle machine) the steps waiting for
# it give up and run as plain subprocesses
WAIT_FOR_START = 5.0
CLOSE_GRACE = 5.0  # a closed zygote's time to exit on SIGTERM, then on SIGKILL
TITLE_ROOM = 4096  # a step zygote's command line: room for its steps' titles
# per-command variables, which a zygote serving many commands is started without
# (`zygote_env`): Metaflow reads them when used, not at import, and our run launcher's
# RUN_WORKER_ENV names the job of one run worker
VOLATILE_ENV = (
    "METAFLOW_RUN_ID",
    "METAFLOW_INIT_",
    TOKEN_VAR,
    "METAFLOW_CODE_",
    RUN_WORKER_ENV,
)


def fork_enabled() -> bool:
    return switch(FORK_VAR, default=True)


def env_key(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The part of an environment that a preloaded Metaflow interpreter depends on."""
    return tuple(
        sorted(
            (k, v)
            for k, v in env.items()
            if (k.startswith("METAFLOW_") and not k.startswith(VOLATILE_ENV))
            or k.startswith("PYTHON")
            or k in ("USER", "USERNAME", "SUDO_USER", "HOME", "PATH", "LANG", "LC_ALL", "TZ")
        )
    )


class ForkedProcess:
    """The subset of `subprocess.Popen` that the supervisor uses, for a zygote child."""

    def __init__(
        self,
        conn: socket.socket,
        pid: int,
        stdout: IO[bytes],
        stderr: IO[bytes],
        buffered: bytes = b"",
    ) -> None:
        self._conn = conn
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        # what arrived with the pid: a child that ended before its client read the pid
        # reply has its exit status sent right behind it, on the same connection
        self._buf = b""
        self._take(buffered)

    def _take(self, data: bytes) -> None:
        self._buf += data
        if b"\n" in self._buf:
            self.returncode = int(json.loads(self._buf.split(b"\n", 1)[0])["exit"])
            self._conn.close()

    def _read_status(self, timeout: float | None) -> None:
        if self.returncode is not None:
            return
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if not ready:
            return
        chunk = self._conn.recv(4096)
        if not chunk:  # zygote gone: we cannot learn the status, wait for the pid to vanish
            if not _pid_alive(self.pid):
                self.returncode = 255
                self._conn.close()
            return
        self._take(chunk)

    def poll(self) -> int | None:
        self._read_status(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else _now() + timeout
        while self.returncode is None:
            remaining = None if deadline is None else max(0.0, deadline - _now())
            self._read_status(0.5 if remaining is None else min(0.5, remaining))
            if self.returncode is None and deadline is not None and _now() >= deadline:
                raise subprocess.TimeoutExpired("zygote child", timeout or 0)
        return self.returncode


def _now() -> float:
    import time

    return time.monotonic()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def zygote_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment a zygote is started with: a step's, without its per-command part."""
    return {k: v for k, v in env.items() if not k.startswith(VOLATILE_ENV)}


class Zygote:
    """Client handle of one zygote process.

    Started by the process that uses it, or for a run worker about to be forked
    (`wait=False`): by `trigger`, or as a spare by a worker zygote (`zygote_server._Spares`). The worker
    then adopts it (`ZygotePool.adopt`) and, once it is ready, becomes the process it
    watches (`watch`)."""

    def __init__(
        self, python: str, env: Mapping[str, str], mode: str = STEP, wait: bool = True
    ) -> None:
        self.key = (python, env_key(env))
        self.adopted = False  # started by the process that forked us, not by us
        self.handed_over = False  # (in that process) a forked run worker has it now
        self._closed = False
        self.path = os.path.join(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX), "sock")
        code = "import sys; from dagster_metaflow.runtime.zygote_server import serve; serve(*sys.argv[1:])"
        start_env = dict(env)
        if mode == STEP:
            # the slot each forked step's token goes into (`zygote_server._fill_token_slot`); setproctitle
            # leaves the environment block alone and titles use the command line's room
            code += " " * TITLE_ROOM
            start_env.update({TOKEN_VAR: TOKEN_SLOT, "SPT_NOENV": "1"})
        self.proc = subprocess.Popen(
            [python, "-u", "-c", code, self.path, mode, str(os.getpid())],
            env=start_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            # never hold the run worker's own stdout/stderr: whoever waits for those to
            # close (a shell pipeline, CI) would wait for the zygote too
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started_at = live_start_time(self.proc.pid)  # its identity, beyond a reusable pid
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Wait for its "ready" line (Metaflow imported); a zygote that is not ready within
        START_TIMEOUT, or died, is closed and RuntimeError raised."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.close()
            raise RuntimeError(
                "zygote did not start" if ready else f"zygote not ready after {START_TIMEOUT:g}s"
            )

    def watch(self, pid: int) -> None:
        """Make the ready zygote watch `pid` instead of the process that started it: when
        `pid` dies, it stops the steps it started and exits (see `zygote_server.serve`)."""
        conn, _pid, _rest = send_request(self.path, {"watch": pid}, ())
        conn.close()

    def release(self) -> None:
        """In the process that started it, once a forked run worker adopted it: forget it,
        leaving it running (its files are the worker's to remove)."""
        self.handed_over = True
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def alive(self) -> bool:
        if self.adopted:  # not our child: ask the kernel whether it is still that process
            return self._still_ours()
        return self.proc.poll() is None

    def _still_ours(self) -> bool:
        started = live_start_time(self.proc.pid)
        return started is not None and started == self.started_at

    def spawn_detached(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None, output_fd: int
    ) -> int:
        """Fork `argv` with stdout and stderr on `output_fd`; return its pid and forget it
        (a run worker is followed through the instance, not through the zygote)."""
        conn, pid, _rest = send_request(self.path, command_request(argv, env, cwd), (output_fd, output_fd))
        conn.close()
        return pid

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> ForkedProcess:
        """Fork `argv` in the zygote, its output on pipes (see `send_request` for failures)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            conn, pid, rest = send_request(self.path, command_request(argv, env, cwd), (out_w, err_w))
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        return ForkedProcess(conn, pid, os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb"), rest)

    def close(self) -> None:
        """Stop the zygote: SIGTERM, SIGKILL after CLOSE_GRACE; our own child is reaped before
        this returns (a killed one too: not left a zombie, nor seen alive, once we go on)."""
        if self._closed:
            return
        self._closed = True
        if self.adopted:  # not our child: signal it if it still is; its parent reaps it
            if self._still_ours():
                try:
                    os.kill(self.proc.pid, signal.SIGTERM)
                except OSError:
                    pass
        elif self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=CLOSE_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=CLOSE_GRACE)
        self.remove_files()

    def remove_files(self) -> None:
        """Its socket and the directory holding it."""
        remove_socket(self.path)


class ZygotePool:
    """One zygote per (interpreter, environment key), started on first use, thread-safe.

    A zygote is started outside the lock. Steps that need it meanwhile wait for it, until
    WAIT_FOR_START after its start began: a plain subprocess would pay the same interpreter
    start and Metaflow import the zygote is paying, on the same cores (the run's first step
    was ~0.15 s slower that way). Past that they run as plain subprocesses at once."""

    def __init__(self, mode: str = STEP) -> None:
        self.mode = mode
        self._lock = threading.Condition()
        self._zygotes: dict[Any, Zygote | None] = {}
        self._starting: dict[Any, float] = {}  # key -> when its waiters stop waiting
        self._closings = 0  # a zygote started across a close() is closed, not kept
        self._handed: dict[Any, Zygote] = {}  # adopted, not taken over yet

    def adopt(self, zygote: Zygote) -> None:
        """In a run worker just forked: the step zygote its forker started for it (`trigger`
        while it created the run, or a worker zygote's spare). Taken over by the first `get`
        of its environment; closed with the pool if none comes."""
        zygote.adopted = True
        with self._lock:
            self._handed[zygote.key] = zygote

    def get(self, python: str, env: Mapping[str, str]) -> Zygote | None:
        key = (python, env_key(env))
        with self._lock:
            if key in self._starting and not self._wait_for_start(key):
                return None
            z = self._zygotes.get(key, False)
            if z is None:
                return None  # failed before: subprocesses from now on
            if isinstance(z, Zygote) and z.alive():
                return z
            self._starting[key] = _now() + WAIT_FOR_START
            closings = self._closings
            handed = self._handed.pop(key, None)
        started: Zygote | None = None
        try:
            started = _take_over(handed) if handed is not None else None
            if started is None:
                started = Zygote(python, zygote_env(env), self.mode)
        except Exception as exc:
            print(
                f"dagster-metaflow: fork server unavailable ({exc}); using subprocesses",
                file=sys.stderr,
            )
        finally:  # waiters must learn the outcome, whatever it is
            with self._lock:
                self._starting.pop(key, None)
                stale = started is not None and closings != self._closings
                if not stale:
                    self._zygotes[key] = started
                self._lock.notify_all()
        if stale and started is not None:  # closed outside the lock: it may wait for the exit
            started.close()
            started = None
        return started

    def _wait_for_start(self, key: Any) -> bool:
        """Under the lock: wait for another thread's start of `key`; False past its deadline."""
        deadline = self._starting[key]
        return self._lock.wait_for(
            lambda: key not in self._starting, max(0.0, deadline - _now())
        )

    def close(self) -> None:
        with self._lock:
            self._closings += 1
            for z in [*self._zygotes.values(), *self._handed.values()]:
                if isinstance(z, Zygote):
                    z.close()
            self._zygotes.clear()
            self._handed.clear()


def _take_over(zygote: Zygote) -> Zygote | None:
    """An adopted zygote, once ready and watching this process; None (closed) if it died
    meanwhile (its starter gone) or cannot be told: the caller starts its own."""
    try:
        zygote.wait_ready()
        zygote.watch(os.getpid())
        return zygote
    except Exception:
        zygote.close()
        return None


POOL = ZygotePool()
atexit.register(POOL.close)
WORKER_POOL = ZygotePool(WORKER)
atexit.register(WORKER_POOL.close)


def spawn_step_process(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> Any:
    """Start argv (a `python flow.py ...` command) through a zygote, or return None."""
    if not fork_enabled() or len(argv) < 2 or argv[0] != sys.executable:
        return None
    zygote = POOL.get(argv[0], env)
    if zygote is None:
        return None
    try:
        return zygote.spawn(argv, env, cwd)
    except ZygoteUnavailable as exc:
        print(
            f"dagster-metaflow: fork server unavailable ({exc}); using a subprocess",
            file=sys.stderr,
        )
        return None


# in a run worker that a worker zygote forked: that zygote's socket (`request_spare`)
_worker_zygote: list[str] = []


def forked_by_worker_zygote(path: str, spare: Zygote | None) -> None:
    """In a run worker just forked by the worker zygote at `path`: remember that zygote,
    and adopt the spare step zygote it handed over (taken over by the first step)."""
    _worker_zygote[:] = [path]
    if spare is not None:
        POOL.adopt(spare)


def worker_job_key(job_name: str, flow_tag: str | None) -> str:
    """What identifies a run's job to a worker zygote (the value of RUN_WORKER_ENV)."""
    return json.dumps([job_name, flow_tag])


def request_spare(job: str, python: str, env: Mapping[str, str]) -> int:
    """In a run worker a worker zygote forked, at the end of its run: ask that zygote to
    start now the step zygote (`python`, `env`) of the next run of `job` (`zygote_server._Spares`), so
    that run's first step does not wait ~0.3 s for its own. The spare's pid; 0 when this
    process was not forked by a worker zygote, or the request failed (nothing is lost)."""
    if not _worker_zygote:
        return 0
    try:
        conn, pid, _rest = send_request(
            _worker_zygote[0],
            {"spare": {"job": job, "python": python, "env": dict(env)}},
            (),
            timeout=2.0,
        )
        conn.close()
    except Exception:
        return 0
    return pid
