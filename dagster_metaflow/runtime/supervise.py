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
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import psutil

GRACE_SECONDS = 10.0
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


def kill_tree(proc: Any, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM the process group and every descendant, wait `grace`, then SIGKILL survivors."""
    try:
        root = psutil.Process(proc.pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        members = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    for p in members:  # descendants that moved to another group/session
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not any(_alive(p) for p in members):
            break
        time.sleep(POLL_SECONDS)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in members:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.wait()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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
    tails: dict[str, deque[str]] = {"stdout": deque(maxlen=tail_lines), "stderr": deque(maxlen=tail_lines)}

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
        )
    started = time.monotonic()

    def pump(stream: str, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            tails[stream].append(line.decode("utf-8", errors="replace").rstrip("\n"))
            sink(stream, line)
            if on_line is not None:
                on_line(stream, line)
        pipe.close()

    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=pump, args=("stdout", proc.stdout), daemon=True),
        threading.Thread(target=pump, args=("stderr", proc.stderr), daemon=True),
    ]
    for r in readers:
        r.start()

    timed_out = False
    try:
        while True:
            try:
                proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            if control is not None and control.cancel.is_set():
                raise StepInterrupted(control.reason)
            if timeout is not None and time.monotonic() - started >= timeout:
                timed_out = True
                kill_tree(proc, grace)
                break
    except BaseException:
        kill_tree(proc, grace)
        for r in readers:
            r.join(timeout=2)
        raise
    if not timed_out:
        # the step may have left children behind in its group: never orphan them
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for r in readers:
        r.join(timeout=grace)
    return ProcessResult(
        returncode=proc.returncode,
        timed_out=timed_out,
        duration=time.monotonic() - started,
        stderr_tail=list(tails["stderr"]),
        stdout_tail=list(tails["stdout"]),
    )

