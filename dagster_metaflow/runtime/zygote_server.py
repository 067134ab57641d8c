"""The zygote process: import Metaflow once (a step zygote) or Dagster (a worker zygote),
then fork one child per request, which becomes exactly the command asked for.

Started by `zygote.Zygote` as `python -c "... zygote_server import serve ..."`; the request
format is `zygote_protocol`'s. A step zygote must not import Dagster, psutil or the
client side (`zygote.py`): every step it forks carries what it imported
(`tests/unit/test_zygote.py` checks the list). A worker zygote's spare step zygotes
(`_Spares`) are started through the client side, imported there only.
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
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .heap import defer_collection, resume_collection
from .step_signals import default_step_signals
from .zygote_protocol import (
    RUN_WORKER_ENV,
    STEP,
    TOKEN_SLOT,
    TOKEN_VAR,
    WORKER,
    live_start_time,
    receive_request,
    remove_socket,
    send_pid,
)

if TYPE_CHECKING:
    from .zygote import Zygote

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
MAX_SPARES = 4  # spare step zygotes a worker zygote keeps, one per job (the most recent)


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
    me = os.getpid()
    # closed (SIGTERM) or failing during the preload: its socket's directory goes too (the
    # pool that started it may be gone with its run worker)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        main_extras = _preload_for(mode)
        server = _ForkServer(path, main_extras, parent_pid, mode)
    except BaseException:
        if os.getpid() == me:
            remove_socket(path)
        raise
    _serve(server)


def _preload_for(mode: str) -> dict[str, Any]:
    """Preload what the zygote's children need; what the preload added to `__main__`."""
    # (no PR_SET_PDEATHSIG: it fires when the *thread* that started us exits, and zygotes
    # are started from short-lived executor threads; the parent poll in `_ForkServer.run`
    # is used instead)
    # no collections while importing (~12 ms of a step zygote's ~0.18 s start, which the
    # run's first step waits for): the import leaves ~1,000 unreachable objects (~2,500 for
    # Dagster's), frozen below with the rest
    defer_collection()
    if mode == WORKER:
        # the client side before the preload, as when it and this were one module: its
        # pools' exit handlers, which every run worker forked here inherits, then run after
        # all that the preload registers (the SQLite engines' close, logging's shutdown)
        from . import zygote  # noqa: F401

        _preload_worker()
        main_extras: dict[str, Any] = {}
    else:
        main_extras = _preload()
    # what the preload built lives as long as the zygote and every child: out of the
    # collector's reach (`resume_collection` freezes it), children's collections neither
    # walk nor copy-on-write its pages, and exits skip a full collection of it (Python's
    # advice for fork without exec)
    resume_collection()  # frozen, then collecting as in any interpreter, children too
    return main_extras


def _serve(server: _ForkServer) -> None:
    """Say ready, serve until the run worker is gone or we are closed, then end: the socket
    removed, the children stopped (a step zygote's), the exit handlers run."""
    me, code = os.getpid(), 1
    try:
        with contextlib.suppress(BrokenPipeError):  # the starter is gone: `run` sees it
            sys.stdout.write("ready\n")
            sys.stdout.flush()
        server.run()
        code = 0
    except BaseException as exc:  # SystemExit(0) on SIGTERM: closed by its pool
        if os.getpid() != me:  # a child between its fork and its own exit handling
            raise
        code = _exit_status(exc)
    finally:
        if os.getpid() == me:  # not in a child between its fork and its own exit handling
            server.remove_socket()
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
                received = receive_request(listener)
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
                self.remove_socket()  # now: stopping the steps may take seconds
                if self.stop_children:
                    _stop_children(list(self.conns))
                    self.conns.clear()
                return
            self._reap()

    def remove_socket(self) -> None:
        """Stop listening; remove the socket and its directory."""
        self.listener.close()
        remove_socket(self.path)

    def _watched_gone(self) -> bool:
        if self.adopted_by is None:
            return os.getppid() != self.parent
        if self.adopted_fd is not None:  # readable once it has exited (a zombie too)
            return bool(select.select([self.adopted_fd], [], [], 0)[0])
        return live_start_time(self.adopted_by) is None  # not our parent: a zombie is gone

    def _watch(self, conn: socket.socket, pid: int) -> None:
        """From now on live as long as `pid` (the run worker that adopted us), not our parent.
        Watched through a pidfd where the kernel has them (the asker is alive: the fd is of
        it), so a step zygote does not import psutil, nor its children carry it."""
        self.adopted_by = pid
        try:
            self.adopted_fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.adopted_fd = None
        send_pid(conn, pid)
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
        send_pid(conn, pid)
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
                    from .zygote import forked_by_worker_zygote

                    forked_by_worker_zygote(self.path, spare)
            except BaseException:
                os._exit(1)  # never back into the server's loop
            _child(request, fds[0], fds[1], self.main_extras)
        if spare is not None and self.spares is not None:
            self.spares.handed(pid, spare)
        for fd in fds:
            os.close(fd)
        self.conns[pid] = conn
        send_pid(conn, pid)

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
        from .zygote import Zygote

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
        deadline = time.monotonic() + 3.0
        for spare in idle:
            try:
                spare.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                spare.proc.kill()
                spare.proc.wait()
            spare.remove_files()
