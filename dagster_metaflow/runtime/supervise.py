"""Run one command in its own process group, stream its output, enforce deadlines.

This is the part of step execution that knows nothing about Metaflow or Dagster: it is
given argv/env, a line sink, a deadline and a cancel event, and guarantees that when it
returns or raises, no process of the group (or any descendant that left it) is alive.
"""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import psutil

from .step_signals import default_step_signals, ignored_step_signals

GRACE_SECONDS = 10.0
# every process of a step inherits this variable: how escaped descendants are found
TOKEN_VAR = "DAGSTER_METAFLOW_STEP_TOKEN"
POLL_SECONDS = 0.05


class StepInterrupted(BaseException):
    """Raised in the waiting thread when its cancel event is set (run terminated)."""


LineSink = Callable[[str, bytes], None]  # (stream name "stdout"/"stderr", raw line)


@dataclass
class StepControl:
    """What an executor hands to the step running in its thread.

    `cancel` asks the step to stop (run termination, workflow timeout); `sink` receives
    every output line (e.g. into Dagster's per-step compute logs).
    """

    cancel: threading.Event = field(default_factory=threading.Event)
    sink: LineSink | None = None
    reason: str = "run terminated"


current_control: contextvars.ContextVar[StepControl | None] = contextvars.ContextVar(
    "dagster_metaflow_step_control", default=None
)


@dataclass
class ProcessResult:
    returncode: int
    timed_out: bool
    duration: float
    stderr_tail: list[str]
    stdout_tail: list[str]


def _default_sink(stream: str, line: bytes) -> None:
    """Without an executor sink, write to this process's stdout/stderr (Dagster captures them)."""
    target = sys.stdout if stream == "stdout" else sys.stderr
    buf = getattr(target, "buffer", None)
    try:
        if buf is not None:
            buf.write(line)
            buf.flush()
        else:
            target.write(line.decode("utf-8", errors="replace"))
            target.flush()
    except (OSError, ValueError):
        pass  # a closed/captured stream must never kill the step


class _Tree:
    """The processes of one step: its process group plus every descendant ever seen.

    Descendants can leave the group (setsid, `start_new_session`) and get re-parented when
    their parent exits, after which the parent chain no longer finds them; so descendants
    are remembered (pid + create time, safe against pid reuse) while the step runs.
    """

    SNAPSHOT_EVERY = 0.5

    def __init__(self, pid: int, token: str | None = None) -> None:
        self.pid = pid
        self.token = token
        self.known: dict[int, psutil.Process] = {}
        # the first look for descendants is at the first poll: a process started a moment
        # ago has none yet, and a scan of every process costs ~1 ms of each step
        self._last = float("-inf")
        try:
            self.known[pid] = psutil.Process(pid)
        except psutil.Error:
            pass

    def adopt_by_token(self) -> None:
        """Find processes carrying this step's token in their environment (descendants that
        escaped and were re-parented before any snapshot saw them)."""
        if not self.token:
            return
        entry = f"{TOKEN_VAR}={self.token}"
        skip = {os.getpid(), self.pid, *self.known}
        for pid in _pids_with_env(entry, skip):
            try:
                p = psutil.Process(pid)  # its identity (start time) from now on
            except psutil.Error:
                continue
            if _pids_with_env(entry, set(), only=pid):  # still it, not a reused pid
                self.known[pid] = p

    def snapshot(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.SNAPSHOT_EVERY:
            return
        self._last = now
        try:
            root = psutil.Process(self.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for p in found:
            self.known.setdefault(p.pid, p)

    def outside_group(self) -> list[psutil.Process]:
        """Known, still-running processes that are not in the step's process group."""
        out = []
        for p in self.known.values():
            if not process_running(p):
                continue
            try:
                if os.getpgid(p.pid) != self.pid:
                    out.append(p)
            except (ProcessLookupError, PermissionError, OSError):
                continue
        return out

    def signal(self, sig: int) -> None:
        """Signal the group once, and each known process outside it once."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in self.outside_group():
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass

    def any_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            pass
        return bool(self.outside_group())


def _pids_with_env(entry: str, skip: set[int], only: int | None = None) -> list[int]:
    """Pids (not in `skip`; `only`: just that one) whose environment holds `entry`
    ("NAME=value"). On Linux this reads /proc/<pid>/environ directly: psutil's objects and
    parsed environments cost ~4x as much, on every step. Processes we may not read are not
    ours."""
    if not os.path.isdir("/proc/self"):
        name, _, value = entry.partition("=")
        found = []
        try:
            procs = psutil.process_iter() if only is None else iter([psutil.Process(only)])
        except psutil.Error:
            return []
        for p in procs:
            try:
                if p.pid not in skip and p.environ().get(name) == value:
                    found.append(p.pid)
            except (psutil.Error, OSError):
                continue
        return found
    needle = b"\0" + entry.encode() + b"\0"
    found = []
    for name in os.listdir("/proc") if only is None else [str(only)]:
        if not name.isdigit() or int(name) in skip:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                data = b"\0" + f.read()
        except OSError:
            continue
        if needle in data or data.endswith(needle[:-1]):
            found.append(int(name))
    return found


def kill_tree(proc: Any, grace: float = GRACE_SECONDS, tree: _Tree | None = None) -> None:
    """SIGTERM the process group and every descendant, wait `grace`, then SIGKILL survivors."""
    tree = tree or _Tree(proc.pid)
    tree.snapshot(force=True)
    tree.adopt_by_token()
    tree.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the root so it does not count as alive
        if not tree.any_alive():
            break
        time.sleep(POLL_SECONDS)
    tree.signal(signal.SIGKILL)
    proc.wait()


def _pipe_ids(pipes: Sequence[IO[bytes]]) -> set[str]:
    """`/proc/<pid>/fd` link targets of these pipes (both ends share the inode)."""
    return {f"pipe:[{os.fstat(p.fileno()).st_ino}]" for p in pipes}


def _kill_pipe_holders(pipe_ids: set[str]) -> None:
    """SIGKILL every other process that holds one of these pipes open (an escaped step
    descendant keeping our readers from ever seeing end-of-file)."""
    me = os.getpid()
    for pid_dir in os.listdir("/proc"):
        if not pid_dir.isdigit() or int(pid_dir) == me:
            continue
        try:
            for entry in os.listdir(f"/proc/{pid_dir}/fd"):
                if os.readlink(f"/proc/{pid_dir}/fd/{entry}") in pipe_ids:
                    os.kill(int(pid_dir), signal.SIGKILL)
                    break
        except OSError:
            continue


def process_running(p: psutil.Process) -> bool:
    """Still running (a zombie has ended), safely for a process that is already gone."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _report_sink_error(exc: Exception) -> None:
    try:
        sys.stderr.write(f"dagster-metaflow: log sink failed: {exc!r}\n")
    except Exception:
        pass


def _finish_readers(
    readers: list[threading.Thread], pipe_ids: set[str], detached: threading.Event
) -> None:
    """Wait for the output readers; if an unknown process still holds the pipes, kill it."""
    for r in readers:
        r.join(timeout=0.5)
    if any(r.is_alive() for r in readers):
        _kill_pipe_holders(pipe_ids)
        for r in readers:
            r.join(timeout=2.0)
    if any(r.is_alive() for r in readers):
        detached.set()  # give up on them; they will not touch the sink or tails again


def run_supervised(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    timeout: float | None = None,
    on_line: Callable[[str, bytes], None] | None = None,
    control: StepControl | None = None,
    grace: float = GRACE_SECONDS,
    tail_lines: int = 40,
    spawn: Callable[[Sequence[str], Mapping[str, str], str | None], Any] | None = None,
) -> ProcessResult:
    """Run argv to completion in a new process group, streaming lines as they come.

    `spawn` may start the process some other way (see zygote.py) and return a Popen-like
    object already in its own session, or None to fall back to `subprocess.Popen`.

    Raises StepInterrupted if `control.cancel` is set, and re-raises any BaseException
    (Dagster's DagsterExecutionInterruptedError, KeyboardInterrupt) after the whole
    process tree is gone. A timeout kills the tree and returns `timed_out=True`.
    """
    control = control or current_control.get()
    sink = (control.sink if control and control.sink else None) or _default_sink
    tails: dict[str, deque[str]] = {
        "stdout": deque(maxlen=tail_lines),
        "stderr": deque(maxlen=tail_lines),
    }

    token = uuid.uuid4().hex
    env = {**env, TOKEN_VAR: token}
    proc = _start_process(argv, env, cwd, spawn)
    started = time.monotonic()

    detached = threading.Event()  # set when we stop waiting for the readers
    assert proc.stdout is not None and proc.stderr is not None
    pipe_ids = _pipe_ids([proc.stdout, proc.stderr])
    readers = _start_readers(proc, tails, (sink, on_line), detached)

    tree = _Tree(proc.pid, token)
    try:
        timed_out = _wait(proc, tree, started, timeout, control, grace)
    except BaseException:
        kill_tree(proc, grace, tree)
        _finish_readers(readers, pipe_ids, detached)
        raise
    if not timed_out:
        # the step may have left processes behind, in its group or escaped from it:
        # never orphan them
        tree.adopt_by_token()
        tree.signal(signal.SIGKILL)
    _finish_readers(readers, pipe_ids, detached)
    return ProcessResult(
        returncode=proc.returncode,
        timed_out=timed_out,
        duration=time.monotonic() - started,
        stderr_tail=list(tails["stderr"]),
        stdout_tail=list(tails["stdout"]),
    )


def _start_process(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    spawn: Callable[[Sequence[str], Mapping[str, str], str | None], Any] | None,
) -> Any:
    """Start argv with `spawn` if given and it accepts, else as a subprocess in a new session."""
    proc = spawn(argv, env, cwd) if spawn is not None else None
    if proc is None:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own session => own process group, pgid == pid
            # only when needed: a preexec_fn costs the vfork fast path
            preexec_fn=default_step_signals if ignored_step_signals() else None,
        )
    return proc


def _start_readers(
    proc: Any,
    tails: Mapping[str, deque[str]],
    sinks: Sequence[LineSink | None],
    detached: threading.Event,
) -> list[threading.Thread]:
    """Start one thread per output pipe of `proc`, each draining it into its tail and sinks."""
    readers = [
        threading.Thread(target=_pump, args=(name, pipe, tails[name], sinks, detached), daemon=True)
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for r in readers:
        r.start()
    return readers


def _pump(
    stream: str,
    pipe: IO[bytes],
    tail: deque[str],
    sinks: Sequence[LineSink | None],
    detached: threading.Event,
) -> None:
    """Reader thread: pass each line of one output pipe to the tail and the sinks."""
    # keep draining whatever happens: a reader that stops makes the child block on write
    for line in iter(pipe.readline, b""):
        if detached.is_set():
            continue
        tail.append(line.decode("utf-8", errors="replace").rstrip("\n"))
        for fn in sinks:
            if fn is None:
                continue
            try:
                fn(stream, line)
            except Exception as exc:  # a broken sink must not stall the step
                _report_sink_error(exc)
    pipe.close()


def _wait(
    proc: Any,
    tree: _Tree,
    started: float,
    timeout: float | None,
    control: StepControl | None,
    grace: float,
) -> bool:
    """Wait for the process to exit; whether it timed out (then its tree is killed).
    Raises StepInterrupted when the control's cancel event is set."""
    while True:
        try:
            proc.wait(timeout=POLL_SECONDS)
            return False
        except subprocess.TimeoutExpired:
            pass
        tree.snapshot()
        if control is not None and control.cancel.is_set():
            raise StepInterrupted(control.reason)
        if timeout is not None and time.monotonic() - started >= timeout:
            kill_tree(proc, grace, tree)
            return True
