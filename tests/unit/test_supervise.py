"""Unit tests for `dagster_metaflow.runtime.supervise`.

These run real (tiny) bash/python child processes. Every wait is bounded, and every
process a test learns about is SIGKILLed at teardown if it somehow survived, so a
failing test never leaks `sleep 300` processes into the machine.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dagster_metaflow.runtime import supervise
from dagster_metaflow.runtime.supervise import (
    ProcessResult,
    StepControl,
    StepInterrupted,
    current_control,
    kill_tree,
    run_supervised,
)

PY = sys.executable
# Generous bounds for a loaded 2-core machine; the happy path is far below them.
DEATH_WAIT = 5.0
FAST = 10.0


# --------------------------------------------------------------------------- helpers


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def _bash(script: str) -> list[str]:
    return ["bash", "-c", textwrap.dedent(script)]


def _py(code: str) -> list[str]:
    return [PY, "-u", "-c", textwrap.dedent(code)]


class Collector:
    """A thread-safe sink/on_line recording (stream, line, monotonic time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, bytes, float]] = []

    def __call__(self, stream: str, line: bytes) -> None:
        with self.lock:
            self.items.append((stream, line, time.monotonic()))

    def lines(self, stream: str | None = None) -> list[bytes]:
        with self.lock:
            return [ln for s, ln, _ in self.items if stream is None or s == stream]

    def pairs(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(s, ln) for s, ln, _ in self.items]


def _silent() -> StepControl:
    """A control whose sink swallows output (keeps pytest's captured output clean)."""
    return StepControl(sink=lambda stream, line: None)


def _is_gone(proc: psutil.Process, name: str | None = None) -> bool:
    """Dead, reaped, a zombie, or (pid reuse) no longer the process we meant."""
    try:
        if not proc.is_running():
            return True
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return name is not None and proc.name() != name
    except psutil.Error:
        return True


def _wait_gone(procs: list[psutil.Process], name: str | None = None, timeout: float = DEATH_WAIT) -> list[psutil.Process]:
    """Poll until every process is gone; return the survivors (empty list == success)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if not _is_gone(p, name)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _wait_for_file(path: Path, timeout: float = FAST) -> str:
    """Wait until `path` holds a complete (newline-terminated) record; return its text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text.endswith("\n"):
            return text
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written")


class Reaper:
    """Tracks pids a test learned about; kills any survivors at teardown."""

    def __init__(self) -> None:
        self.procs: list[psutil.Process] = []

    def track_pids(self, pids: list[int]) -> list[psutil.Process]:
        out = []
        for pid in pids:
            try:
                p = psutil.Process(pid)
            except psutil.NoSuchProcess:
                # already gone: a stand-in that reports "not running"
                p = _DeadProcess(pid)  # type: ignore[assignment]
            out.append(p)
        self.procs.extend(out)
        return out

    def cleanup(self) -> None:
        for p in self.procs:
            try:
                if p.is_running():
                    p.kill()
            except psutil.Error:
                pass


class _DeadProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def is_running(self) -> bool:
        return False

    def kill(self) -> None:
        pass


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    yield r
    r.cleanup()


def _read_pids(path: Path) -> list[int]:
    return [int(tok) for tok in _wait_for_file(path, timeout=1.0).split()]


# --------------------------------------------------------------------------- exit codes, tails


def test_exit_code_zero_and_tails() -> None:
    res = run_supervised(
        _bash("echo out1; echo err1 >&2; echo out2; echo err2 >&2"),
        env=_env(),
        control=_silent(),
    )
    assert isinstance(res, ProcessResult)
    assert res.returncode == 0
    assert res.timed_out is False
    assert res.stdout_tail == ["out1", "out2"]
    assert res.stderr_tail == ["err1", "err2"]
    assert 0 <= res.duration < FAST


@pytest.mark.parametrize("code", [1, 3, 42, 255])
def test_nonzero_exit_code_is_returned(code: int) -> None:
    res = run_supervised(_bash(f"echo boom >&2; exit {code}"), env=_env(), control=_silent())
    assert res.returncode == code
    assert res.timed_out is False
    assert res.stderr_tail == ["boom"]
    assert res.stdout_tail == []


def test_python_exit_code() -> None:
    res = run_supervised(_py("import sys; print('hi'); sys.exit(7)"), env=_env(), control=_silent())
    assert res.returncode == 7
    assert res.stdout_tail == ["hi"]


def test_killed_by_signal_gives_negative_returncode() -> None:
    res = run_supervised(_bash("kill -KILL $$"), env=_env(), control=_silent())
    assert res.returncode == -signal.SIGKILL
    assert res.timed_out is False


def test_tail_lines_keeps_only_the_last_lines() -> None:
    script = """
        import sys
        for i in range(100):
            print(f"out{i}")
            print(f"err{i}", file=sys.stderr)
        sys.exit(3)
    """
    res = run_supervised(_py(script), env=_env(), control=_silent(), tail_lines=5)
    assert res.returncode == 3
    assert res.stdout_tail == [f"out{i}" for i in range(95, 100)]
    assert res.stderr_tail == [f"err{i}" for i in range(95, 100)]


def test_default_tail_is_40_lines() -> None:
    res = run_supervised(
        _py("import sys\nfor i in range(100): print(i, file=sys.stderr)"),
        env=_env(),
        control=_silent(),
    )
    assert res.stderr_tail == [str(i) for i in range(60, 100)]


def test_tail_lines_zero_keeps_nothing_but_still_streams() -> None:
    sink = Collector()
    res = run_supervised(_bash("echo a; echo b >&2"), env=_env(), control=StepControl(sink=sink), tail_lines=0)
    assert res.stdout_tail == [] and res.stderr_tail == []
    assert sorted(sink.pairs()) == [("stderr", b"b\n"), ("stdout", b"a\n")]


def test_tail_decodes_invalid_utf8_and_sink_gets_raw_bytes() -> None:
    sink = Collector()
    res = run_supervised(
        _bash(r"printf 'caf\xc3\xa9\n\xff\xfe bad\n'; printf 'no-newline'"),
        env=_env(),
        control=StepControl(sink=sink),
    )
    assert sink.lines("stdout") == [b"caf\xc3\xa9\n", b"\xff\xfe bad\n", b"no-newline"]
    assert res.stdout_tail == ["café", "\ufffd\ufffd bad", "no-newline"]


def test_large_output_on_both_streams_does_not_deadlock() -> None:
    # well beyond the 64 KiB pipe buffer on each stream, interleaved
    script = """
        import sys
        for i in range(20000):
            sys.stdout.write(f"o{i:06d}" + "x" * 40 + "\\n")
            sys.stderr.write(f"e{i:06d}" + "y" * 40 + "\\n")
    """
    counts = {"stdout": 0, "stderr": 0}
    lock = threading.Lock()

    def count(stream: str, line: bytes) -> None:
        with lock:
            counts[stream] += 1

    res = run_supervised(_py(script), env=_env(), control=StepControl(sink=count), timeout=30, tail_lines=2)
    assert res.returncode == 0 and not res.timed_out
    assert counts == {"stdout": 20000, "stderr": 20000}
    assert res.stdout_tail[-1].startswith("o019999")
    assert res.stderr_tail[-1].startswith("e019999")


def test_env_and_cwd_are_used(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DM_TEST_VAR": "hello-env"}
    res = run_supervised(
        _bash('echo "$DM_TEST_VAR"; pwd -P; echo "home=${HOME-unset}"'),
        env=env,
        cwd=str(tmp_path),
        control=_silent(),
    )
    assert res.returncode == 0
    # env is used as the complete environment, not merged into ours
    assert res.stdout_tail == ["hello-env", str(tmp_path.resolve()), "home=unset"]


def test_child_runs_in_its_own_session_and_group(tmp_path: Path) -> None:
    res = run_supervised(
        _py("import os; print(os.getpid(), os.getpgrp(), os.getsid(0))"),
        env=_env(),
        control=_silent(),
    )
    pid, pgid, sid = (int(x) for x in res.stdout_tail[0].split())
    assert pid == pgid == sid
    assert pgid != os.getpgrp()
    assert sid != os.getsid(0)


def test_stdin_is_devnull() -> None:
    # would block forever if stdin were inherited from a terminal/pipe
    res = run_supervised(_bash("cat; echo done"), env=_env(), control=_silent(), timeout=FAST)
    assert res.returncode == 0 and not res.timed_out
    assert res.stdout_tail == ["done"]


def test_spawn_returning_none_falls_back_to_popen() -> None:
    calls: list[tuple[list[str], dict[str, str], str | None]] = []

    def spawn(argv, env, cwd):  # type: ignore[no-untyped-def]
        calls.append((list(argv), dict(env), cwd))
        return None

    res = run_supervised(_bash("echo fallback"), env=_env(X="1"), control=_silent(), spawn=spawn)
    assert res.returncode == 0 and res.stdout_tail == ["fallback"]
    assert len(calls) == 1 and calls[0][1]["X"] == "1" and calls[0][2] is None


def test_spawn_result_is_supervised(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    started: list[subprocess.Popen[bytes]] = []

    def spawn(argv, env, cwd):  # type: ignore[no-untyped-def]
        proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        started.append(proc)
        return proc

    script = f"""
        sleep 300 &
        echo "$$ $!" > {pidfile}
        echo spawned; echo e >&2
        sleep 300
    """
    res = run_supervised(_bash(script), env=_env(), cwd=str(tmp_path), control=_silent(), spawn=spawn, timeout=1, grace=1)
    assert len(started) == 1
    assert res.timed_out is True
    assert res.stdout_tail == ["spawned"] and res.stderr_tail == ["e"]
    child, grandchild = _read_pids(pidfile)
    assert child == started[0].pid
    assert _wait_gone(reaper.track_pids([child, grandchild])) == []


# --------------------------------------------------------------------------- live streaming


def test_lines_are_streamed_live() -> None:
    seen = Collector()
    script = """
        import sys, time
        print("first", flush=True)
        print("first-err", file=sys.stderr, flush=True)
        time.sleep(1.5)
        print("second", flush=True)
    """
    res = run_supervised(_py(script), env=_env(), on_line=seen, control=_silent(), timeout=FAST)
    ended = time.monotonic()
    assert res.returncode == 0
    items = {line: t for _, line, t in seen.items}
    assert set(items) == {b"first\n", b"first-err\n", b"second\n"}
    # the first lines arrived while the child was still sleeping, not at exit
    assert items[b"first\n"] <= ended - 1.0
    assert items[b"first-err\n"] <= ended - 1.0
    assert items[b"second\n"] - items[b"first\n"] >= 1.0
    assert res.duration >= 1.4


def test_on_line_and_sink_both_receive_every_line() -> None:
    sink, on_line = Collector(), Collector()
    run_supervised(
        _bash("echo a; echo b >&2; echo c"),
        env=_env(),
        control=StepControl(sink=sink),
        on_line=on_line,
    )
    assert sink.lines("stdout") == [b"a\n", b"c\n"] == on_line.lines("stdout")
    assert sink.lines("stderr") == [b"b\n"] == on_line.lines("stderr")


# --------------------------------------------------------------------------- sinks


def test_raising_on_line_does_not_stall_the_child() -> None:
    calls = 0

    def flaky(stream: str, line: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("log store hiccup")

    script = """
        import sys
        for i in range(5000):  # ~250 KiB, far beyond the pipe buffer
            sys.stdout.write("x" * 50 + "\\n")
        print("end")
    """
    res = run_supervised(_py(script), env=_env(), control=_silent(), on_line=flaky, timeout=2, grace=1)
    assert res.timed_out is False
    assert res.returncode == 0




def test_custom_sink_receives_stream_and_raw_bytes() -> None:
    sink = Collector()
    res = run_supervised(
        _bash("echo hello; echo oops >&2; echo world"),
        env=_env(),
        control=StepControl(sink=sink),
    )
    assert res.returncode == 0
    pairs = sink.pairs()
    assert ("stdout", b"hello\n") in pairs
    assert ("stderr", b"oops\n") in pairs
    assert ("stdout", b"world\n") in pairs
    assert all(isinstance(line, bytes) for _, line in pairs)
    assert {s for s, _ in pairs} == {"stdout", "stderr"}
    # per-stream order is preserved
    assert sink.lines("stdout") == [b"hello\n", b"world\n"]


def test_default_sink_writes_to_our_stdout_and_stderr(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    assert current_control.get() is None
    res = run_supervised(_bash("echo to-out; echo to-err >&2"), env=_env())
    assert res.returncode == 0
    captured = capfdbinary.readouterr()
    assert b"to-out\n" in captured.out
    assert b"to-err\n" in captured.err


def test_default_sink_text_stream_without_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    supervise._default_sink("stdout", b"caf\xc3\xa9\n")
    supervise._default_sink("stderr", b"\xffx\n")
    assert out.getvalue() == "café\n"
    assert err.getvalue() == "\ufffdx\n"


def test_default_sink_swallows_closed_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    closed_text, closed_bin = io.StringIO(), io.TextIOWrapper(io.BytesIO())
    closed_text.close()
    closed_bin.close()
    monkeypatch.setattr(sys, "stdout", closed_text)
    supervise._default_sink("stdout", b"x\n")  # must not raise
    monkeypatch.setattr(sys, "stdout", closed_bin)
    supervise._default_sink("stdout", b"x\n")  # must not raise


def test_contextvar_control_sink_is_used_when_no_control_passed() -> None:
    sink = Collector()
    token = current_control.set(StepControl(sink=sink))
    try:
        res = run_supervised(_bash("echo via-ctx"), env=_env())
    finally:
        current_control.reset(token)
    assert res.returncode == 0
    assert sink.pairs() == [("stdout", b"via-ctx\n")]


def test_explicit_control_wins_over_contextvar() -> None:
    ctx_sink, explicit_sink = Collector(), Collector()
    token = current_control.set(StepControl(sink=ctx_sink))
    try:
        run_supervised(_bash("echo x"), env=_env(), control=StepControl(sink=explicit_sink))
    finally:
        current_control.reset(token)
    assert explicit_sink.pairs() == [("stdout", b"x\n")]
    assert ctx_sink.pairs() == []


# --------------------------------------------------------------------------- timeouts


def test_timeout_kills_child_and_background_grandchild(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    script = f"""
        sleep 300 &
        echo "$$ $!" > {pidfile}
        sleep 300
    """
    t0 = time.monotonic()
    res = run_supervised(_bash(script), env=_env(), control=_silent(), timeout=1, grace=1)
    elapsed = time.monotonic() - t0
    assert res.timed_out is True
    assert elapsed < FAST
    assert 0.9 <= res.duration < FAST
    assert res.returncode < 0  # died of a signal
    procs = reaper.track_pids(_read_pids(pidfile))
    assert len(procs) == 2
    assert _wait_gone(procs) == []


def test_timeout_kills_grandchild_that_escaped_into_its_own_session(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    script = f"""
        import os, subprocess, time
        p = subprocess.Popen(["sleep", "300"], start_new_session=True)
        tmp = {str(pidfile)!r} + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{{os.getpid()}} {{p.pid}} {{os.getsid(0)}} {{os.getsid(p.pid)}}\\n")
        os.replace(tmp, {str(pidfile)!r})
        time.sleep(300)
    """
    t0 = time.monotonic()
    # a little more than 1 s: a python child must start up and write its pidfile first
    res = run_supervised(_py(script), env=_env(), control=_silent(), timeout=2, grace=1)
    elapsed = time.monotonic() - t0
    assert res.timed_out is True
    assert elapsed < FAST
    child, grandchild, child_sid, grandchild_sid = _read_pids(pidfile)
    assert grandchild_sid != child_sid, "test set-up: grandchild should have left the session"
    procs = reaper.track_pids([child, grandchild])
    assert _wait_gone(procs) == []


def test_timeout_with_escaped_grandchild_ignoring_sigterm(tmp_path: Path, reaper: Reaper) -> None:
    """A descendant outside the group that ignores SIGTERM is SIGKILLed after `grace`."""
    pidfile = tmp_path / "pids"
    script = f"""
        import os, signal, subprocess, time
        p = subprocess.Popen(
            ["sleep", "300"],
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        tmp = {str(pidfile)!r} + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{{os.getpid()}} {{p.pid}}\\n")
        os.replace(tmp, {str(pidfile)!r})
        time.sleep(300)
    """
    res = run_supervised(_py(script), env=_env(), control=_silent(), timeout=2, grace=1)
    assert res.timed_out is True
    procs = reaper.track_pids(_read_pids(pidfile))
    # the child dies on SIGTERM at once, but kill_tree waits for all members, so the
    # grace period is used up waiting for the grandchild
    assert res.duration >= 2 + 0.9
    assert res.duration < FAST
    assert _wait_gone(procs) == []


def test_timeout_none_waits_for_completion() -> None:
    res = run_supervised(_bash("sleep 0.3; echo done"), env=_env(), control=_silent(), timeout=None)
    assert res.returncode == 0 and not res.timed_out
    assert res.stdout_tail == ["done"]


def test_fast_child_does_not_time_out() -> None:
    res = run_supervised(_bash("echo quick"), env=_env(), control=_silent(), timeout=5, grace=5)
    assert res.returncode == 0 and not res.timed_out
    assert res.duration < 5


def test_output_before_timeout_is_kept_in_tails() -> None:
    res = run_supervised(
        _bash("echo started; echo warn >&2; exec sleep 300"),
        env=_env(),
        control=_silent(),
        timeout=1,
        grace=1,
    )
    assert res.timed_out
    assert res.stdout_tail == ["started"]
    assert res.stderr_tail == ["warn"]


# --------------------------------------------------------------------------- grace period


def test_grace_sigkills_child_that_ignores_sigterm(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    # SIG_IGN is inherited across fork/exec, so the background sleep ignores TERM too
    script = f"""
        trap '' TERM
        sleep 300 &
        echo "$$ $!" > {pidfile}
        sleep 300
    """
    t0 = time.monotonic()
    res = run_supervised(_bash(script), env=_env(), control=_silent(), timeout=1, grace=2)
    elapsed = time.monotonic() - t0
    assert res.timed_out is True
    assert res.returncode == -signal.SIGKILL
    # SIGTERM was ignored, so it took the full timeout + grace, then SIGKILL
    assert res.duration >= 1 + 2 - 0.1
    assert elapsed < FAST
    procs = reaper.track_pids(_read_pids(pidfile))
    assert _wait_gone(procs) == []


def test_child_that_exits_on_sigterm_stops_well_before_grace() -> None:
    res = run_supervised(
        _bash("exec sleep 300"), env=_env(), control=_silent(), timeout=1, grace=5
    )
    assert res.timed_out is True
    assert res.returncode == -signal.SIGTERM
    assert res.duration < 1 + 2.5  # nowhere near timeout + grace (6 s)


def test_python_child_with_sigterm_handler_gets_to_clean_up(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    # async-signal-safe handler (os.write/os._exit): see test_group_member_gets_sigterm_once
    script = f"""
        import os, signal, time
        def bye(*_):
            with open({str(marker)!r}, "w") as f:
                f.write("yes")
            os.write(1, b"cleaning up\\n")
            os._exit(5)
        signal.signal(signal.SIGTERM, bye)
        print("ready", flush=True)
        time.sleep(300)
    """
    res = run_supervised(_py(script), env=_env(), control=_silent(), timeout=2, grace=5)
    assert res.timed_out is True
    assert res.returncode == 5
    assert marker.read_text() == "yes"
    assert res.stdout_tail[0] == "ready"
    assert "cleaning up" in res.stdout_tail
    assert res.duration < 2 + 3


def test_group_member_gets_sigterm_once() -> None:
    script = """
        import os, signal, time
        n = 0
        def on_term(*_):
            global n
            n += 1
            os.write(1, f"TERM {n}\\n".encode())
            time.sleep(0.2)  # a short clean-up, during which a second signal would land
            os._exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        time.sleep(300)
    """
    for _ in range(5):  # the duplicate is usually, not always, observable: try a few times
        control = _silent()
        seen = Collector()

        def cancel_when_ready(stream: str, line: bytes, control: StepControl = control) -> None:
            if line == b"ready\n":
                control.cancel.set()

        def on_line(stream: str, line: bytes, seen: Collector = seen, cb=cancel_when_ready) -> None:
            seen(stream, line)
            cb(stream, line)

        with pytest.raises(StepInterrupted):
            run_supervised(_py(script), env=_env(), control=control, on_line=on_line, grace=3, timeout=FAST)
        terms = [ln for ln in seen.lines("stdout") if ln.startswith(b"TERM")]
        assert terms == [b"TERM 1\n"]


def test_kill_tree_directly(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    proc = subprocess.Popen(
        _bash(f"trap '' TERM; sleep 300 & echo \"$$ $!\" > {pidfile}; wait"),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs = reaper.track_pids([proc.pid])
    try:
        text = _wait_for_file(pidfile)
        procs += reaper.track_pids([int(x) for x in text.split()][1:])
        t0 = time.monotonic()
        kill_tree(proc, grace=0.5)
        elapsed = time.monotonic() - t0
        assert proc.returncode == -signal.SIGKILL
        assert 0.4 <= elapsed < FAST
        assert _wait_gone(procs) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_tree_on_already_exited_process_is_harmless() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    t0 = time.monotonic()
    kill_tree(proc, grace=5)
    assert time.monotonic() - t0 < 2
    assert proc.returncode == 0


# --------------------------------------------------------------------------- cancellation


def _cancel_when_file_appears(path: Path, control: StepControl, delay: float = 0.5) -> threading.Thread:
    """Set control.cancel ~`delay` s after start, but never before `path` is written."""

    def run() -> None:
        t0 = time.monotonic()
        try:
            _wait_for_file(path)
        finally:
            time.sleep(max(0.0, delay - (time.monotonic() - t0)))
            control.cancel.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


CANCEL_SCRIPT = """
    sleep 300 &
    echo "$$ $!" > {pidfile}
    echo running
    sleep 300
"""


def test_cancel_event_raises_step_interrupted_and_kills_tree(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    sink = Collector()
    control = StepControl(sink=sink, reason="user asked to stop")
    canceller = _cancel_when_file_appears(pidfile, control)
    t0 = time.monotonic()
    with pytest.raises(StepInterrupted) as excinfo:
        run_supervised(_bash(CANCEL_SCRIPT.format(pidfile=pidfile)), env=_env(), control=control, grace=2)
    elapsed = time.monotonic() - t0
    canceller.join(timeout=FAST)
    assert str(excinfo.value) == "user asked to stop"
    assert elapsed < FAST
    assert elapsed >= 0.4
    procs = reaper.track_pids(_read_pids(pidfile))
    assert _wait_gone(procs) == []
    assert ("stdout", b"running\n") in sink.pairs()


def test_step_interrupted_is_not_an_exception() -> None:
    # so that `except Exception` in step code cannot swallow a run termination
    assert issubclass(StepInterrupted, BaseException)
    assert not issubclass(StepInterrupted, Exception)


def test_cancel_already_set_before_start(tmp_path: Path) -> None:
    control = _silent()
    control.cancel.set()
    t0 = time.monotonic()
    with pytest.raises(StepInterrupted, match="run terminated"):
        run_supervised(_bash("exec sleep 300"), env=_env(), control=control, grace=2)
    assert time.monotonic() - t0 < FAST


def test_cancel_via_contextvar_in_thread(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    control = _silent()
    outcome: dict[str, object] = {}

    def worker() -> None:
        token = current_control.set(control)
        try:
            outcome["result"] = run_supervised(
                _bash(CANCEL_SCRIPT.format(pidfile=pidfile)), env=_env(), grace=2
            )
        except BaseException as exc:  # record exactly what was raised
            outcome["exc"] = exc
        finally:
            current_control.reset(token)

    t0 = time.monotonic()
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    canceller = _cancel_when_file_appears(pidfile, control)
    thread.join(timeout=FAST)
    canceller.join(timeout=FAST)
    assert not thread.is_alive(), "run_supervised did not return after cancel"
    assert time.monotonic() - t0 < FAST
    assert "result" not in outcome
    assert isinstance(outcome.get("exc"), StepInterrupted)
    procs = reaper.track_pids(_read_pids(pidfile))
    assert _wait_gone(procs) == []
    # the contextvar was set only inside the worker thread's context
    assert current_control.get() is None


class _InterruptingEvent(threading.Event):
    """A cancel event whose check raises KeyboardInterrupt once `armed` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = threading.Event()

    def is_set(self) -> bool:
        if self.armed.is_set():
            raise KeyboardInterrupt("simulated Ctrl-C in the waiting thread")
        return super().is_set()


def test_other_base_exception_kills_tree_then_reraises(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    event = _InterruptingEvent()
    control = StepControl(cancel=event, sink=lambda s, ln: None)

    def arm() -> None:
        try:
            _wait_for_file(pidfile)
        finally:
            event.armed.set()

    armer = threading.Thread(target=arm, daemon=True)
    armer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt, match="simulated"):
        run_supervised(_bash(CANCEL_SCRIPT.format(pidfile=pidfile)), env=_env(), control=control, grace=2)
    assert time.monotonic() - t0 < FAST
    armer.join(timeout=FAST)
    procs = reaper.track_pids(_read_pids(pidfile))
    assert _wait_gone(procs) == []


# --------------------------------------------------------------------------- leftovers after normal exit


def test_leftover_group_member_is_killed_after_normal_exit(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    # the background sleep keeps the stdout/stderr pipes open: if it were not killed,
    # the readers would block (up to `grace`) and the process would be orphaned
    script = f"""
        sleep 300 &
        echo "$!" > {pidfile}
        echo parent-done
        exit 0
    """
    t0 = time.monotonic()
    res = run_supervised(_bash(script), env=_env(), control=_silent(), grace=10)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0
    assert res.timed_out is False
    assert res.stdout_tail == ["parent-done"]
    assert elapsed < 5, "readers waited for the leftover to close the pipes"
    procs = reaper.track_pids(_read_pids(pidfile))
    assert _wait_gone(procs, name="sleep") == []


def test_leftover_with_redirected_output_is_killed_after_normal_exit(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    script = f"""
        nohup sleep 300 >/dev/null 2>&1 &
        echo "$!" > {pidfile}
        exit 4
    """
    res = run_supervised(_bash(script), env=_env(), control=_silent())
    assert res.returncode == 4
    procs = reaper.track_pids(_read_pids(pidfile))
    assert _wait_gone(procs, name="sleep") == []


def test_escaped_grandchild_is_killed_after_normal_exit(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    script = f"""
        import os, subprocess
        p = subprocess.Popen(
            ["sleep", "300"], start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        with open({str(pidfile)!r} + ".tmp", "w") as f:
            f.write(f"{{p.pid}}\\n")
        os.replace({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
    """
    res = run_supervised(_py(script), env=_env(), control=_silent(), grace=1)
    assert res.returncode == 0
    procs = reaper.track_pids(_read_pids(pidfile))
    assert _wait_gone(procs, name="sleep", timeout=0.5) == []


def test_escaped_grandchild_holding_pipes_after_normal_exit(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "pids"
    script = f"""
        import os, subprocess
        p = subprocess.Popen(["sleep", "300"], start_new_session=True)  # inherits our pipes
        with open({str(pidfile)!r} + ".tmp", "w") as f:
            f.write(f"{{p.pid}}\\n")
        os.replace({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
        print("child-done", flush=True)
    """
    t0 = time.monotonic()
    res = run_supervised(_py(script), env=_env(), control=_silent(), grace=1)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0
    procs = reaper.track_pids(_read_pids(pidfile))
    assert _wait_gone(procs, name="sleep", timeout=0.5) == []
    assert elapsed < 1, f"returned only after {elapsed:.1f} s (readers waited for the pipes)"


# --------------------------------------------------------------------------- finding a step's processes by token


@pytest.mark.parametrize("read_proc", [True, False], ids=["proc", "psutil"])
def test_processes_are_found_by_their_exact_token(
    read_proc: bool, monkeypatch: pytest.MonkeyPatch, reaper: Reaper
) -> None:
    """`_pids_with_env` matches the whole `NAME=value` entry (not a longer value, not
    another variable ending in the name), reading /proc directly or through psutil alike."""
    if not read_proc:
        real_isdir = os.path.isdir
        monkeypatch.setattr(os.path, "isdir", lambda p: False if p == "/proc/self" else real_isdir(p))
    var = supervise.TOKEN_VAR
    procs = {
        name: subprocess.Popen(["sleep", "300"], env=_env(**{k: v}))
        for name, (k, v) in {
            "exact": (var, "tok1"),
            "longer": (var, "tok12"),
            "other": (f"X{var}", "tok1"),
        }.items()
    }
    for p in procs.values():
        reaper.track_pids([p.pid])
    try:
        found = supervise._pids_with_env(f"{var}=tok1", skip={os.getpid()})
        assert procs["exact"].pid in found
        assert procs["longer"].pid not in found and procs["other"].pid not in found
        assert procs["exact"].pid not in supervise._pids_with_env(
            f"{var}=tok1", skip={procs["exact"].pid}
        )
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_a_step_s_tree_does_not_scan_every_process_when_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process started a moment ago has no descendants yet: the first look for them is
    at the first poll (a scan of every process cost ~1 ms of each step)."""
    scans: list[int] = []
    real_children = psutil.Process.children

    def children(self: psutil.Process, recursive: bool = False) -> list[psutil.Process]:
        scans.append(self.pid)
        return real_children(self, recursive=recursive)

    monkeypatch.setattr(psutil.Process, "children", children)
    proc = subprocess.Popen(["sleep", "0.3"])
    try:
        tree = supervise._Tree(proc.pid, "tok")
        assert scans == [] and list(tree.known) == [proc.pid]
    finally:
        proc.wait()
    res = run_supervised(_py("import time; time.sleep(0.3)"), env=_env(), control=_silent())
    assert res.returncode == 0 and scans  # looked while it ran


def test_a_pid_reused_between_the_scan_and_the_adoption_is_not_adopted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The token is read again once the process's identity is taken: a pid that changed
    hands in between is not signalled as the step's."""
    other = subprocess.Popen(["sleep", "300"])
    try:
        calls: list[int | None] = []

        def scan(entry: str, skip: set[int], only: int | None = None) -> list[int]:
            calls.append(only)
            return [other.pid] if only is None else []  # gone from it on the second read

        monkeypatch.setattr(supervise, "_pids_with_env", scan)
        tree = supervise._Tree(os.getpid() + 10**7, "tok")  # a root that does not exist
        tree.adopt_by_token()
        assert calls == [None, other.pid] and other.pid not in tree.known
    finally:
        other.kill()
        other.wait()
