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

The server half (`serve`) must not import Dagster in a step zygote. A *worker* zygote
(`WORKER_POOL`, used by `MetaflowRunLauncher` in dagster-daemon and the webserver) preloads
Dagster instead and forks `python -m dagster_metaflow.run_worker ...` run workers: those are
detached (their own sessions) and outlive the zygote and its parent. At the end of its run a
worker asks it for a *spare* step zygote of its job (`request_spare`); the next run of that
job gets it, ready, instead of waiting ~0.3 s for its own (`_Spares`).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping, Sequence
from typing import IO, Any, NoReturn

from .heap import defer_collection, resume_collection
from .step_signals import default_step_signals

HEADER = struct.Struct("!I")
START_TIMEOUT = 30.0
# how long after a zygote's start began (~0.25 s on an idle machine) the steps waiting for
# it give up and run as plain subprocesses
WAIT_FOR_START = 5.0
PRELOAD = ("metaflow", "metaflow.cli", "metaflow.task", "metaflow.datastore", "metaflow.runtime")
# what a run worker imports before its first event: Dagster, its instance's storages (the
# definitions-state storage brings universal_pathlib and fsspec), the loading of a code
# location, the run body, our runtime; and Metaflow's datastore, which its ops read (its
# configuration comes from the environment, and a worker zygote's is its workers',
# `env_key`). A module another Dagster release lacks is skipped (`_preload_worker`).
WORKER_PRELOAD = (
    "dagster",
    "dagster._cli.api",
    "dagster._core.instance.factory",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.storage.defs_state.blob_storage_state_storage",
    "upath.core",
    "upath.implementations.local",
    "watchdog.observers.polling",
    "dagster._core.workspace.autodiscovery",
    "dagster._core.definitions.repository_definition.repository_data_builder",
    "dagster._core.execution.plan.active",
    "dagster_metaflow.runtime.executor",
    "dagster_metaflow.runtime.engines",
    "dagster_metaflow.runtime.flow",
    "dagster_metaflow.runtime.io",
    "dagster_metaflow.runtime.sensors",
    "dagster_metaflow.runtime.assets",
    "dagster_metaflow.runtime.watchdog",
    "dagster_metaflow.deployments",
    "metaflow.datastore",
    "metaflow.plugins",
)
STEP, WORKER = "step", "worker"
# set by our run launcher in the environment of the run workers it starts, to the run's job
# (`worker_job_key`); a worker zygote hands the spare step zygote of that job to the worker
RUN_WORKER_ENV = "DAGSTER_METAFLOW_RUN_WORKER"
MAX_SPARES = 4  # spare step zygotes a worker zygote keeps, one per job (the most recent)
TOKEN_VAR = "DAGSTER_METAFLOW_STEP_TOKEN"  # as `supervise`'s, which a zygote does not import
TOKEN_SLOT = "0" * 32  # a step's token is 32 hex digits (`uuid4().hex`)
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
    return os.environ.get("DAGSTER_METAFLOW_FORK", "1").lower() not in ("0", "false", "no", "off")


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


# ------------------------------------------------------------------------------------------
# client side (runs in the Dagster run worker)
# ------------------------------------------------------------------------------------------


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


def _live_start_time(pid: int) -> float | None:
    """When process `pid` started, if it is alive and not a zombie (a process that is not
    our child may wait to be reaped); None otherwise. With the pid, the start time tells a
    process from a later one that reused its pid."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def zygote_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment a zygote is started with: a step's, without its per-command part."""
    return {k: v for k, v in env.items() if not k.startswith(VOLATILE_ENV)}


class Zygote:
    """Client handle of one zygote process.

    Started by the process that uses it, or for a run worker about to be forked
    (`wait=False`): by `trigger`, or as a spare by a worker zygote (`_Spares`). The worker
    then adopts it (`ZygotePool.adopt`) and, once it is ready, becomes the process it
    watches (`watch`)."""

    def __init__(
        self, python: str, env: Mapping[str, str], mode: str = STEP, wait: bool = True
    ) -> None:
        self.key = (python, env_key(env))
        self.adopted = False  # started by the process that forked us, not by us
        self.handed_over = False  # (in that process) a forked run worker has it now
        self._closed = False
        self._dir = tempfile.mkdtemp(prefix="dm-zygote-")
        self.path = os.path.join(self._dir, "sock")
        code = "import sys; from dagster_metaflow.runtime.zygote import serve; serve(*sys.argv[1:])"
        start_env = dict(env)
        if mode == STEP:
            # the slot each forked step's token goes into (`_fill_token_slot`); setproctitle
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
        self.started_at = _live_start_time(self.proc.pid)  # its identity, beyond a reusable pid
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
        `pid` dies, it stops the steps it started and exits (see `serve`)."""
        conn, _pid, _rest = _send(self.path, {"watch": pid}, ())
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
        started = _live_start_time(self.proc.pid)
        return started is not None and started == self.started_at

    def spawn_detached(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None, output_fd: int
    ) -> int:
        """Fork `argv` with stdout and stderr on `output_fd`; return its pid and forget it
        (a run worker is followed through the instance, not through the zygote)."""
        conn, pid, _rest = _send(self.path, _command(argv, env, cwd), (output_fd, output_fd))
        conn.close()
        return pid

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> ForkedProcess:
        """Fork `argv` in the zygote, its output on pipes (see `_send` for failures)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            conn, pid, rest = _send(self.path, _command(argv, env, cwd), (out_w, err_w))
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        return ForkedProcess(conn, pid, os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb"), rest)

    def close(self) -> None:
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
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.remove_files()

    def remove_files(self) -> None:
        """Its socket and the directory holding it."""
        try:
            os.unlink(self.path)
        except OSError:
            pass
        try:
            os.rmdir(self._dir)
        except OSError:
            pass


def _send(
    path: str, request: Mapping[str, Any], fds: Sequence[int], timeout: float | None = None
) -> tuple[socket.socket, int, bytes]:
    """Send one request to the zygote listening at `path` (a command, `_command`, with the
    child's stdout/stderr fds; a watch or a spare with none); return the open connection,
    the pid in the reply and what arrived after it. Raises ZygoteUnavailable when the
    request never reached the zygote (the caller may run the command itself); any later
    failure is a plain error: the command may have started, so it must not be started a
    second time."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        try:
            conn.connect(path)
            body = json.dumps(request).encode()
            socket.send_fds(conn, [HEADER.pack(len(body))], list(fds))
        except OSError as exc:
            raise ZygoteUnavailable(str(exc)) from exc
        conn.sendall(body)
        reply = b""
        while b"\n" not in reply:
            chunk = conn.recv(4096)
            if not chunk:
                raise RuntimeError("fork server closed the connection after taking the command")
            reply += chunk
        line, rest = reply.split(b"\n", 1)
        return conn, int(json.loads(line)["pid"]), rest
    except BaseException:
        conn.close()
        raise


def _command(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> dict[str, Any]:
    """The request that forks `argv` in `cwd` with environment `env`."""
    return {"argv": list(argv), "env": dict(env), "cwd": cwd}


class ZygoteUnavailable(Exception):
    """The zygote could not take a command; nothing was started."""


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


# ------------------------------------------------------------------------------------------
# server side (runs in the zygote; no Dagster here)
# ------------------------------------------------------------------------------------------


def _recv_exact(conn: socket.socket, n: int, initial: bytes = b"") -> bytes:
    data = initial
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _child(request: dict[str, Any], out_fd: int, err_fd: int, main_extras: dict[str, Any]) -> None:
    """In the forked child: become `python <flow file> <args...>` and never return."""
    code = 1
    try:
        os.setsid()
        fresh_interpreter_signals()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (devnull, out_fd, err_fd):
            os.close(fd)
        _set_title(request["argv"])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _fill_token_slot(os.environ.get(TOKEN_VAR, ""))
        argv = request["argv"][1:]
        try:
            if argv[0] == "-m":  # `python -m module args...` (a run worker)
                import runpy

                sys.argv = [argv[1], *argv[2:]]
                sys.path[0] = os.getcwd()
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                script = os.path.abspath(argv[0])
                sys.argv = argv
                sys.path[0] = os.path.dirname(script)
                _run_as_main(script, main_extras)
            code = 0
        except BaseException as exc:
            code = _exit_status(exc)
        _shut_down()
    finally:
        _exit_now(code)


def _fill_token_slot(token: str) -> bool:
    """In a forked step: write its token over the zygote's placeholder in this process's
    /proc environment block, where a plain step has it, so that what the step forks without
    exec carries it too (the supervisor finds escaped descendants by it). In place, same
    length: the block stays a well-formed environment. False when there is no slot."""
    if len(token) != len(TOKEN_SLOT):
        return False
    prefix = f"{TOKEN_VAR}=".encode()
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end: fields 50, 51
        fd = os.open("/proc/self/mem", os.O_RDWR)
        try:
            block = b"\0" + os.pread(fd, end - start, start)
            at = block.find(b"\0" + prefix + TOKEN_SLOT.encode() + b"\0")
            if at < 0:
                return False
            where = start + at + len(prefix)  # `at` counts the NUL put in front
            return os.pwrite(fd, token.encode(), where) == len(token)
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return False


def _exit_status(exc: BaseException) -> int:
    """The status `python` exits with when `exc` ends its program, printing what it prints."""
    if isinstance(exc, SystemExit):
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    if isinstance(exc, KeyboardInterrupt):
        return 130
    traceback.print_exc()
    return 1


def _shut_down() -> None:
    """What the interpreter's shutdown does before it tears down the modules: join the
    threads, run the atexit handlers."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except Exception:
        pass
    atexit._run_exitfuncs()


def _exit_now(code: int) -> NoReturn:
    """Flush and end this process without tearing down its modules: a zygote's child, or a
    zygote closed by its pool (the teardown of its preloaded modules took ~15 ms, which a
    run's end waits for in `Zygote.close`)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(code & 0xFF if code >= 0 else 1)


def fresh_interpreter_signals() -> None:
    """In a forked child: the signal dispositions a fresh `python ...` gets from exec and
    interpreter start-up (KeyboardInterrupt on SIGINT, SIGPIPE/SIGXFSZ ignored)."""
    default_step_signals()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)


def _set_title(argv: Sequence[str]) -> None:
    """`ps` shows the step command, as for a plain `python flow.py step ...`."""
    try:
        import setproctitle

        setproctitle.setproctitle(" ".join(argv))
    except Exception:
        pass


def _run_as_main(script: str, main_extras: dict[str, Any]) -> None:
    """Execute `script` in the real `__main__` module, as `python script` does.

    Metaflow registers pickling helpers (ForeachFrame, ...) in `__main__` when imported; a
    fresh interpreter gets them when the flow file imports metaflow, here they are carried
    over from the preload (`runpy` would run the script in a new module without them).
    """
    import builtins

    import __main__

    ns = __main__.__dict__
    ns.clear()
    ns.update(
        {
            "__name__": "__main__",
            "__doc__": None,
            "__package__": None,
            "__loader__": None,
            "__spec__": None,
            "__file__": script,
            "__cached__": None,
            "__builtins__": builtins,
        }
    )
    ns.update(main_extras)
    with open(script, "rb") as f:
        code = compile(f.read(), script, "exec")
    exec(code, ns)


# Python source with the kinds of string a flow holds (docstrings among them)
_TOKENIZER_SAMPLE = '''x = (1, "a", 'b', f"c", r"d", b"e")
"""doc
string"""
'''


def _fill_caches() -> None:
    """Fill, once, caches every step process fills with the same values (~5 ms per step).

    - Metaflow's version (`metaflow_version.get_version`): the INFO file next to Metaflow,
      or `git describe` of Metaflow's own directory, and the extensions' versions; all of
      it fixed by the interpreter's installation and the `METAFLOW_*` variables a zygote is
      keyed by. Not when METAFLOW_EXTRACTED_ROOT is relative: that one is read from the
      step's working directory.
    - the regular expressions of Python's tokenizer, which `inspect` runs over the flow's
      source when Metaflow builds the flow's graph (a cache of compiled patterns).
    Nothing of the flow is read here: the flow file and its git repository are read by
    each step, as in a fresh interpreter."""
    import io
    import tokenize

    root = os.environ.get("METAFLOW_EXTRACTED_ROOT")
    if root is None or os.path.isabs(root):
        try:
            from metaflow.metaflow_version import get_version

            get_version()
        except Exception:
            pass
    try:
        for _ in tokenize.generate_tokens(io.StringIO(_TOKENIZER_SAMPLE).readline):
            pass
    except Exception:
        pass


def _forget_cli() -> None:
    """Drop Metaflow's CLI modules (keeping everything they imported).

    Metaflow builds the options of its commands when `metaflow.cli` is imported, from the
    flow class known at that moment: `--config`/`--config-value`, flow decorator options
    such as @project's `--branch`, the parameters of `init`. A plain `python flow.py step`
    imports the CLI from inside the flow's `__init__`; forgetting the preloaded copy makes a
    forked child do the same.
    """
    import metaflow

    for name in list(sys.modules):
        if name == "metaflow.cli" or name.startswith("metaflow.cli_components"):
            del sys.modules[name]
    for attr in ("cli", "cli_components"):
        if attr in vars(metaflow):
            delattr(metaflow, attr)


def _stop_children(pids: Sequence[int], grace: float = 10.0) -> None:
    """The run worker died: stop every step this zygote started (their whole process
    groups: each step is a session leader), SIGTERM first, SIGKILL after `grace`."""
    import time

    for pid in pids:
        _killpg(pid, signal.SIGTERM)
        _kill(pid, signal.SIGTERM)  # a child that has not made its own group yet
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                alive.remove(pid)
        time.sleep(0.1)
    for pid in pids:
        _killpg(pid, signal.SIGKILL)
    for pid in alive:  # not reaped: still ours (a reaped pid may be someone else's now)
        _kill(pid, signal.SIGKILL)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def serve(path: str, mode: str = STEP, parent: str = "") -> None:
    """Zygote main loop: preload Metaflow (or Dagster, for run workers), then fork one
    child per request, for as long as `parent` (the pid of the process that started us)
    lives. The pid is given, not read after the preload: a parent that died during the
    preload would leave us re-parented, watching init forever."""
    parent_pid = int(parent) if parent else os.getppid()
    # (no PR_SET_PDEATHSIG: it fires when the *thread* that started us exits, and zygotes
    # are started from short-lived executor threads; the parent poll in `_ForkServer.run`
    # is used instead)
    # no collections while importing (~12 ms of a step zygote's ~0.18 s start, which the
    # run's first step waits for): the import leaves ~1,000 unreachable objects (~2,500 for
    # Dagster's), frozen below with the rest
    defer_collection()
    if mode == WORKER:
        _preload_worker()
        main_extras: dict[str, Any] = {}
    else:
        main_extras = _preload()
    # what the preload built lives as long as the zygote and every child: out of the
    # collector's reach (`resume_collection` freezes it), children's collections neither
    # walk nor copy-on-write its pages, and exits skip a full collection of it (Python's
    # advice for fork without exec)
    resume_collection()  # frozen, then collecting as in any interpreter, children too
    server = _ForkServer(path, main_extras, parent_pid, mode)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    me, code = os.getpid(), 1
    try:
        server.run()
        code = 0
    except BaseException as exc:  # SystemExit(0) on SIGTERM: closed by its pool
        if os.getpid() != me:  # a child between its fork and its own exit handling
            raise
        code = _exit_status(exc)
    finally:
        if os.getpid() == me:  # not in a child between its fork and its own exit handling
            server.listener.close()
            try:
                os.unlink(path)
            except OSError:
                pass
            if server.stop_children and server.conns:
                # closed (SIGTERM) while steps still run: a run worker ending by an error,
                # whose exit closes its pool; its steps must not outlive it either (within
                # the 5 s `Zygote.close` waits before it kills the zygote)
                _stop_children(list(server.conns), grace=3.0)
            if server.spares is not None:
                server.spares.close()  # the kept ones; a handed one is its worker's
            # its atexit handlers (logging, multiprocessing, certifi: what Metaflow's import
            # registered) still run; nothing else of the zygote needs a finalizer
            try:
                _shut_down()
            finally:
                _exit_now(code)


def _preload_worker() -> None:
    """What every run worker forked from here needs before its first event (WORKER_PRELOAD,
    the migration head, the key of run-database templates). A module the installed
    Dagster lacks is skipped; any other import error is the zygote's failure to start, so
    workers start the plain way."""
    import importlib

    from .._dagster_shards import schema_key
    from .._dagster_sqlite import warm_alembic_heads

    for name in WORKER_PRELOAD:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            absent = exc.name is not None and (name == exc.name or name.startswith(exc.name + "."))
            if not absent or name.startswith("dagster_metaflow."):
                raise
    warm_alembic_heads()
    try:  # the key of run-database templates, from the Dagster loaded here (`_dagster_shards`)
        schema_key()
    except Exception:
        pass


def _preload() -> dict[str, Any]:
    """Import Metaflow once; return what that import added to `__main__` (see `_run_as_main`)."""
    import importlib

    import __main__

    before = set(vars(__main__))
    for name in PRELOAD:
        importlib.import_module(name)
    main_extras = {k: v for k, v in vars(__main__).items() if k not in before}
    _forget_cli()
    _fill_caches()
    try:  # set up once here: it needs the process's original argv/environ memory
        import setproctitle

        setproctitle.getproctitle()
    except Exception:
        pass
    return main_extras


class _ForkServer:
    """The zygote's listening socket, its signal wake-up pipe, and the children it forked
    (pid -> the connection that waits for the child's exit status)."""

    def __init__(self, path: str, main_extras: dict[str, Any], parent: int, mode: str) -> None:
        self.path = path
        self.main_extras = main_extras
        # a step zygote's children die with the run worker; a worker zygote's children are
        # run workers, which outlive the daemon or webserver that launched them
        self.stop_children = mode != WORKER
        self.spares = _Spares() if mode == WORKER else None
        self.parent = parent
        self.adopted_by: int | None = None  # a run worker watched instead (`Zygote.watch`)
        self.adopted_fd: int | None = None  # its pidfd
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        self.conns: dict[int, socket.socket] = {}

    def run(self) -> None:
        """Serve requests and report exits until the run worker (our parent, or the worker
        that adopted us) is gone."""
        listener, wake_r = self.listener, self.wake_r
        while True:
            ready: list[Any]
            watched: list[Any] = [listener, wake_r]
            try:
                ready, _, _ = select.select(watched, [], [], 1.0)
            except InterruptedError:
                ready = []
            if wake_r in ready:
                os.read(wake_r, 4096)
            if listener in ready:  # before the check below: a watch may be pending
                received = _receive_request(listener)
                if received is not None:
                    conn, request, fds = received
                    if "watch" in request:
                        self._watch(conn, int(request["watch"]))
                    elif "spare" in request:
                        self._keep_spare(conn, request["spare"])
                    else:
                        self._fork(conn, request, fds)
            if self._watched_gone():
                # the run worker is gone (killed, crashed): its steps must not live on;
                # run workers, though, outlive the daemon or webserver that launched them
                if self.stop_children:
                    _stop_children(list(self.conns))
                    self.conns.clear()
                return
            self._reap()

    def _watched_gone(self) -> bool:
        if self.adopted_by is None:
            return os.getppid() != self.parent
        if self.adopted_fd is not None:  # readable once it has exited (a zombie too)
            return bool(select.select([self.adopted_fd], [], [], 0)[0])
        return _live_start_time(self.adopted_by) is None  # not our parent: a zombie is gone

    def _watch(self, conn: socket.socket, pid: int) -> None:
        """From now on live as long as `pid` (the run worker that adopted us), not our parent.
        Watched through a pidfd where the kernel has them (the asker is alive: the fd is of
        it), so a step zygote does not import psutil, nor its children carry it."""
        self.adopted_by = pid
        try:
            self.adopted_fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.adopted_fd = None
        _send_pid(conn, pid)
        conn.close()

    def _keep_spare(self, conn: socket.socket, spec: Any) -> None:
        """Start a spare step zygote for the next run of a job (a worker zygote only), and
        tell the client its pid (0: none)."""
        pid = 0
        if self.spares is not None and isinstance(spec, dict):
            try:
                pid = self.spares.put(str(spec["job"]), str(spec["python"]), dict(spec["env"]))
            except Exception:
                pid = 0
        _send_pid(conn, pid)
        conn.close()

    def _fork(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        """Fork the child that runs `request`, and tell the client its pid. A run worker
        gets the spare step zygote of its job, if there is one."""
        spare = self.spares.take(request.get("env") or {}) if self.spares is not None else None
        pid = os.fork()
        if pid == 0:
            try:
                self.listener.close()
                conn.close()
                for c in self.conns.values():
                    c.close()
                os.close(self.wake_r)
                os.close(self.wake_w)
                if self.adopted_fd is not None:
                    os.close(self.adopted_fd)
                if self.spares is not None:
                    self.spares.forget(keep=spare)
                    _forked_by_worker_zygote(self.path, spare)
            except BaseException:
                os._exit(1)  # never back into the server's loop
            _child(request, fds[0], fds[1], self.main_extras)
        if spare is not None and self.spares is not None:
            self.spares.handed(pid, spare)
        for fd in fds:
            os.close(fd)
        self.conns[pid] = conn
        _send_pid(conn, pid)

    def _reap(self) -> None:
        """Collect the children that exited and send each one's status to its client."""
        conns = self.conns
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.spares is not None:
                self.spares.reaped(pid, status)
            done = conns.pop(pid, None)
            if done is not None:
                try:
                    code = os.waitstatus_to_exitcode(status)
                    done.sendall(json.dumps({"exit": code}).encode() + b"\n")
                except OSError:
                    pass
                done.close()


def _send_pid(conn: socket.socket, pid: int) -> None:
    """A request's reply: the pid it concerns (a client that went away is no error here)."""
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass


class _Spares:
    """The spare step zygotes of a worker zygote: one kept per job, for the MAX_SPARES jobs
    that asked last. A run worker asks for its job's at the end of its run (`request_spare`);
    the worker zygote forks the next worker of that job holding it (`_ForkServer._fork`),
    which takes it over if its step environment is the same, else closes it with its pool.

    Every spare is a child of the worker zygote until it is reaped, so it is signalled by
    pid only while not reaped (the pid is ours then). A kept spare watches the worker zygote
    and ends with it; a handed one is stopped when its run worker's exit is reaped (taken
    over, it is ending anyway; not taken over, nobody else would stop it). Nothing here
    waits for a process, except `close` at the worker zygote's exit (3 s at most)."""

    def __init__(self) -> None:
        self._kept: dict[str, Zygote] = {}  # job -> its spare
        self._holders: dict[int, Zygote] = {}  # run worker pid -> the spare it was forked with
        self._unreaped: dict[int, Zygote] = {}  # every spare that is still our child, by pid

    def put(self, job: str, python: str, env: Mapping[str, str]) -> int:
        """Start the spare of `job`, replacing its previous one; its pid."""
        spare = Zygote(python, env, STEP, wait=False)
        self._unreaped[spare.proc.pid] = spare
        stale = [self._kept.pop(job)] if job in self._kept else []
        self._kept[job] = spare
        while len(self._kept) > MAX_SPARES:
            stale.append(self._kept.pop(next(iter(self._kept))))
        for old in stale:
            self._stop(old)
        return spare.proc.pid

    def take(self, env: Mapping[str, str]) -> Zygote | None:
        """The spare kept for the job of a run worker with environment `env`, if it lives."""
        spare = self._kept.pop(env.get(RUN_WORKER_ENV) or "", None)
        return spare if spare is not None and spare.proc.pid in self._unreaped else None

    def handed(self, worker: int, spare: Zygote) -> None:
        """In the worker zygote, after forking run worker `worker` holding `spare`."""
        spare.release()
        self._holders[worker] = spare

    def reaped(self, pid: int, status: int) -> None:
        """Child `pid` exited: if a spare, forget it (its `Popen` must never wait for a pid
        that may be reused now); if a run worker, stop the spare it was forked holding."""
        spare = self._unreaped.pop(pid, None)
        if spare is not None:
            spare.proc.returncode = os.waitstatus_to_exitcode(status)
            spare.remove_files()
        held = self._holders.pop(pid, None)
        if held is not None:
            self._stop(held)

    def _stop(self, spare: Zygote) -> None:
        if spare.proc.pid in self._unreaped:
            _kill(spare.proc.pid, signal.SIGTERM)

    def forget(self, keep: Zygote | None) -> None:
        """In a run worker just forked: the spares are the worker zygote's, not this
        process's; their pipes are closed here (but `keep`'s, the one it adopts)."""
        for spare in self._unreaped.values():
            if spare is not keep and spare.proc.stdout is not None:
                spare.proc.stdout.close()
        self._kept.clear()
        self._holders.clear()
        self._unreaped.clear()

    def close(self) -> None:
        """At the worker zygote's exit: stop the spares no run worker holds (SIGTERM,
        SIGKILL after 3 s); a held one is its worker's."""
        held = {id(z) for z in self._holders.values()}
        idle = [z for z in self._unreaped.values() if id(z) not in held]
        self._kept.clear()
        for spare in idle:
            spare.proc.terminate()
        deadline = _now() + 3.0
        for spare in idle:
            try:
                spare.proc.wait(timeout=max(0.0, deadline - _now()))
            except subprocess.TimeoutExpired:
                spare.proc.kill()
                spare.proc.wait()
            spare.remove_files()


# in a run worker that a worker zygote forked: that zygote's socket (`request_spare`)
_worker_zygote: list[str] = []


def _forked_by_worker_zygote(path: str, spare: Zygote | None) -> None:
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
    start now the step zygote (`python`, `env`) of the next run of `job` (`_Spares`), so
    that run's first step does not wait ~0.3 s for its own. The spare's pid; 0 when this
    process was not forked by a worker zygote, or the request failed (nothing is lost)."""
    if not _worker_zygote:
        return 0
    try:
        conn, pid, _rest = _send(
            _worker_zygote[0],
            {"spare": {"job": job, "python": python, "env": dict(env)}},
            (),
            timeout=2.0,
        )
        conn.close()
    except Exception:
        return 0
    return pid


def _receive_request(
    listener: socket.socket,
) -> tuple[socket.socket, dict[str, Any], list[int]] | None:
    """Accept one request: its connection, the command, and the child's stdout/stderr fds;
    None (connection closed) for a malformed one."""
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        msg, fds, _flags, _addr = socket.recv_fds(conn, HEADER.size, 2)
        header = _recv_exact(conn, HEADER.size, msg)
        (length,) = HEADER.unpack(header)
        request = json.loads(_recv_exact(conn, length))
        if not isinstance(request, dict) or not isinstance(request.get("watch", 0), int):
            raise ValueError("not a request")
        if len(fds) != (0 if "watch" in request or "spare" in request else 2):
            raise ConnectionError("a command comes with two file descriptors, other requests none")
    except (OSError, ValueError):
        conn.close()
        for fd in fds:
            os.close(fd)
        return None
    return conn, request, fds
