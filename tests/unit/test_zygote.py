"""Zygote client rules: a command is never started twice; a slow zygote blocks no one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import survivors

from dagster_metaflow.runtime import zygote, zygote_server
from dagster_metaflow.runtime.step_signals import default_step_signals
from dagster_metaflow.runtime.zygote import Zygote, ZygotePool, ZygoteUnavailable
from dagster_metaflow.runtime.zygote_protocol import HEADER


def _fake_zygote(path: str, reply: bytes = b"") -> threading.Thread:
    """A server that takes one command (header, fds, body), sends `reply` and hangs up;
    without a reply (no pid) the command may have started."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        msg, fds, _flags, _addr = socket.recv_fds(conn, HEADER.size, 2)
        for fd in fds:
            os.close(fd)
        conn.recv(65536)
        if reply:
            conn.sendall(reply)
        conn.close()
        listener.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _client(path: str) -> Zygote:
    z = Zygote.__new__(Zygote)
    z.path = path
    return z


def test_a_command_the_zygote_took_is_not_started_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "sock")
    _fake_zygote(path)
    z = _client(path)
    monkeypatch.setattr(zygote.POOL, "get", lambda python, env: z)
    monkeypatch.setattr(zygote, "fork_enabled", lambda: True)
    # spawn_step_process must raise (the step fails and retries), never return None (which
    # would make the caller start the same command as a subprocess)
    with pytest.raises(RuntimeError, match="after taking the command"):
        zygote.spawn_step_process([sys.executable, "flow.py", "step", "x"], dict(os.environ), None)


def test_a_child_that_ended_before_its_pid_was_read(tmp_path: Path) -> None:
    """The server may send the exit status right behind the pid (a quick child, a client
    thread starved under load): both lines arrive in one read."""
    path = str(tmp_path / "sock")
    _fake_zygote(path, reply=b'{"pid": 4242}\n{"exit": 3}\n')
    proc = _client(path).spawn([sys.executable, "flow.py"], {}, None)
    assert proc.pid == 4242
    assert proc.poll() == 3
    assert proc.wait(timeout=1) == 3


def test_a_zygote_that_cannot_take_the_command_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    z = _client(str(tmp_path / "nobody-listens"))
    with pytest.raises(ZygoteUnavailable):
        z.spawn([sys.executable, "flow.py"], {}, None)
    monkeypatch.setattr(zygote.POOL, "get", lambda python, env: z)
    monkeypatch.setattr(zygote, "fork_enabled", lambda: True)
    assert zygote.spawn_step_process([sys.executable, "flow.py", "step", "x"], dict(os.environ), None) is None


READY_LATE = "sleep 0.5\necho ready\nexec sleep 30\n"  # a zygote ready after 0.5 s
NEVER_READY = "exec sleep 30\n"


def _fake_python(tmp_path: Path, body: str) -> str:
    """An "interpreter" that behaves like a zygote starting as `body` says."""
    path = tmp_path / "slow-python"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _start_in_thread(pool: ZygotePool, python: str) -> tuple[threading.Thread, list[object]]:
    """A step's thread starting the zygote; returns once the start has begun."""
    result: list[object] = []
    starter = threading.Thread(target=lambda: result.append(pool.get(python, {"A": "1"})))
    starter.start()
    deadline = time.monotonic() + 10
    while not pool._starting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool._starting, "the zygote's start did not begin"
    return starter, result


def test_a_zygote_slow_to_start_is_given_up_and_blocks_no_other_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = _fake_python(tmp_path, NEVER_READY)
    monkeypatch.setattr(zygote, "START_TIMEOUT", 2.0)
    monkeypatch.setattr(zygote, "WAIT_FOR_START", 0.5)
    pool = ZygotePool()
    t0 = time.monotonic()
    starter, result = _start_in_thread(pool, slow)
    # other steps needing the same zygote meanwhile: they wait until 0.5 s after the start
    # began, then run as subprocesses, and later ones at once
    assert pool.get(slow, {"A": "1"}) is None
    assert 0.4 < time.monotonic() - t0 < 1.5
    t1 = time.monotonic()
    assert pool.get(slow, {"A": "1"}) is None
    assert time.monotonic() - t1 < 0.2
    starter.join(timeout=20)
    assert result == [None] and time.monotonic() - t0 < 10
    assert pool.get(slow, {"A": "1"}) is None  # given up: not retried for every step


def test_a_step_waits_for_the_zygote_another_step_is_starting(tmp_path: Path) -> None:
    """Not a plain subprocess meanwhile: it would pay the very start the zygote pays."""
    slow = _fake_python(tmp_path, READY_LATE)
    pool = ZygotePool()
    starter, result = _start_in_thread(pool, slow)
    try:
        waiter = pool.get(slow, {"A": "1"})
        starter.join(timeout=10)
        assert isinstance(waiter, zygote.Zygote) and result == [waiter]
    finally:
        pool.close()
    assert not waiter.alive()


def test_a_closed_zygote_that_ignores_sigterm_is_killed_and_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL after the grace, and reaped before close() returns, so never seen alive after
    it: a full suite's run once saw a closed zygote still alive, which only the SIGKILL path
    could leave (it did not wait for the kill; a stalled machine or a deaf zygote gets there)."""
    deaf = _fake_python(tmp_path, "trap '' TERM\necho ready\nexec sleep 30\n")
    monkeypatch.setattr(zygote, "CLOSE_GRACE", 0.5)
    pool = ZygotePool()
    z = pool.get(deaf, {"A": "1"})
    assert isinstance(z, zygote.Zygote) and z.alive()
    t0 = time.monotonic()
    pool.close()
    assert not z.alive() and z.proc.returncode == -signal.SIGKILL
    assert 0.4 < time.monotonic() - t0 < 5


def test_a_zygote_started_across_a_close_is_closed_not_kept(tmp_path: Path) -> None:
    """The run ended (close) while a step's thread was still starting a zygote."""
    slow = _fake_python(tmp_path, READY_LATE)
    pool = ZygotePool()
    starter, result = _start_in_thread(pool, slow)
    pool.close()
    starter.join(timeout=10)
    assert result == [None] and not pool._zygotes


_SHOW_SIGNALS = """
import signal
names = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGCHLD", "SIGPIPE", "SIGXFSZ")
print(sorted((n, str(signal.getsignal(getattr(signal, n)))) for n in names))
"""

_DRIVER = """
import os, sys
from dagster_metaflow.runtime import zygote
from dagster_metaflow.runtime.step_signals import default_step_signals
from dagster_metaflow.runtime.supervise import run_supervised
script, path = sys.argv[1], sys.argv[2]
spawn = zygote.spawn_step_process if path == "zygote" else None
res = run_supervised([sys.executable, script], env=dict(os.environ), spawn=spawn)
print(res.stdout_tail[-1])
"""


@pytest.mark.parametrize("ignored", [False, True])
def test_steps_get_a_fresh_interpreters_signals_on_both_paths(tmp_path: Path, ignored: bool) -> None:
    """A run worker started in the background (signals ignored) still gets steps that die on
    SIGTERM, and a zygote child has exactly the dispositions of `python flow.py`."""
    import signal
    import subprocess

    script = tmp_path / "show.py"
    script.write_text(_SHOW_SIGNALS)
    # what `python flow.py` started from a terminal sees (whatever pytest itself inherited)
    fresh = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True,
        preexec_fn=default_step_signals,
    ).stdout

    def ignore() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)

    seen = _last_line_on_both_paths(script, ignore if ignored else default_step_signals)
    assert seen["zygote"] == seen["subprocess"] == fresh.strip()


def _last_line_on_both_paths(script: Path, preexec_fn: Any = None) -> dict[str, str]:
    """The last line `script` prints, run by a supervisor through the zygote and as a
    plain subprocess (`_DRIVER`)."""
    seen = {}
    for path in ("zygote", "subprocess"):
        env = {**os.environ, "DAGSTER_METAFLOW_FORK": "1"}
        out = subprocess.run(
            [sys.executable, "-c", _DRIVER, str(script), path],
            capture_output=True, text=True, env=env, timeout=120, preexec_fn=preexec_fn,
        )
        assert out.returncode == 0, out.stderr
        seen[path] = out.stdout.strip().splitlines()[-1]
    return seen


_LEAVE_FORKED = """
import os, time
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # a daemonizing library: fork without exec, a session of its own, no stdio
    os.setsid()
    for fd in (0, 1, 2):
        os.close(fd)
    os.write(w, b"x")
    time.sleep(300)
    os._exit(0)
os.read(r, 1)  # it has left the step's session
with open(os.environ["PIDS_OUT"], "w") as f:
    f.write(str(pid))
print("left", pid)
"""


@pytest.mark.parametrize("path", ["zygote", "subprocess"])
def test_a_descendant_forked_without_exec_that_left_the_session_ends_with_its_step(
    tmp_path: Path, path: str
) -> None:
    """Only the step's token leads to such a process once its step has ended: a plain
    step's descendants forked without exec carry it in /proc/<pid>/environ, and so do a
    forked step's (the zygote's token slot, `_fill_token_slot`)."""
    script = tmp_path / "leave.py"
    script.write_text(_LEAVE_FORKED)
    pids_out = tmp_path / "pids"
    env = {**os.environ, "DAGSTER_METAFLOW_FORK": "1", "PIDS_OUT": str(pids_out)}
    out = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(script), path],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0 and "left" in out.stdout, out.stderr
    pid = int(pids_out.read_text())
    left = survivors([pid], within=5)
    for p in left:
        os.kill(p, 9)
    assert not left, f"the step's escaped descendant {pid} outlived it ({path})"


_SHOW_TITLE = """
import os, setproctitle
environ = open("/proc/self/environ", "rb").read().split(b"\\0")
token = os.environ["DAGSTER_METAFLOW_STEP_TOKEN"].encode()
print(repr((setproctitle.getproctitle(), b"DAGSTER_METAFLOW_STEP_TOKEN=" + token in environ)))
"""


def test_a_forked_step_s_title_and_proc_environment_are_a_plain_step_s(tmp_path: Path) -> None:
    """`getproctitle()` is the command line on both paths, and /proc/<pid>/environ holds
    the step's token on both (the zygote's slot keeps its environment block intact)."""
    script = tmp_path / "title.py"
    script.write_text(_SHOW_TITLE)
    seen = _last_line_on_both_paths(script)
    assert seen["zygote"] == seen["subprocess"] == repr((f"{sys.executable} {script}", True))


_SHOW_MODULES = """
import gc, importlib, json, os, sys
for name in {preload!r}:
    importlib.import_module(name)
with open(os.environ["MODULES_OUT"], "w") as f:
    json.dump(sorted(sys.modules), f)
print("written", "gc", gc.isenabled())
"""

# what a forked step may carry beyond a plain interpreter that imported what the zygote
# preloads on purpose (Metaflow, its CLI, task, datastore, and `metaflow.runtime` for
# `flow.py init`): the zygote's own code (the fork server, its collector settings, the steps'
# signal dispositions, process titles); Dagster and psutil never
_FORK_EXTRAS = (
    "dagster_metaflow",
    "dagster_metaflow.runtime",
    "dagster_metaflow.runtime.zygote_server",
    "dagster_metaflow.runtime.zygote_protocol",
    "dagster_metaflow.runtime.heap",
    "dagster_metaflow.runtime.step_signals",
    "gc",
    "resource",
)
_FORK_EXTRA_PACKAGES = ("setproctitle",)


def test_a_forked_step_carries_only_the_zygote_s_few_modules_beyond_a_plain_step(
    tmp_path: Path,
) -> None:
    """The same script through the zygote and as a plain subprocess: the forked one has
    every module the plain one has, and beyond them only the zygote's own few (never
    Dagster, whose import in the step zygote would make every step carry it)."""
    script = tmp_path / "show.py"
    script.write_text(_SHOW_MODULES.format(preload=zygote_server.PRELOAD))
    seen = {}
    for path in ("zygote", "subprocess"):
        out_file = tmp_path / f"{path}.json"
        env = {**os.environ, "DAGSTER_METAFLOW_FORK": "1", "MODULES_OUT": str(out_file)}
        out = subprocess.run(
            [sys.executable, "-c", _DRIVER, str(script), path],
            capture_output=True, text=True, env=env, timeout=120,
        )
        assert out.returncode == 0 and "written gc True" in out.stdout, out.stderr
        seen[path] = set(json.loads(out_file.read_text()))
    assert not seen["subprocess"] - seen["zygote"]
    extras = seen["zygote"] - seen["subprocess"]
    unknown = {
        m for m in extras if m not in _FORK_EXTRAS and m.split(".")[0] not in _FORK_EXTRA_PACKAGES
    }
    assert not unknown, sorted(unknown)
    assert not {m for m in seen["zygote"] if m.split(".")[0] == "dagster"}


def test_worker_zygote_forks_detached_module_commands_that_outlive_it(tmp_path: Path) -> None:
    """A worker zygote (Dagster preloaded) runs `python -m module args` with output in a
    file, in its own session; closing the zygote leaves the command running."""
    import psutil

    mod = tmp_path / "dm_sleeper.py"
    mod.write_text("import os, sys, time\nprint('argv', sys.argv[1:], os.getsid(0) == os.getpid(), flush=True)\ntime.sleep(float(sys.argv[1]))\nprint('done', flush=True)\n")
    log = tmp_path / "worker.log"
    pool = ZygotePool(zygote.WORKER)
    env = dict(os.environ)
    z = pool.get(sys.executable, env)
    assert z is not None
    with open(log, "ab") as f:
        pid = z.spawn_detached([sys.executable, "-m", "dm_sleeper", "1.5"], env, str(tmp_path), f.fileno())
    pool.close()  # the daemon that launched the worker exits
    assert psutil.pid_exists(pid)
    deadline = time.monotonic() + 30
    while "done" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.read_text().splitlines() == ["argv ['1.5'] True", "done"]


def test_a_run_worker_forked_by_a_worker_zygote_finds_its_start_up_done(tmp_path: Path) -> None:
    """What a run worker would import and read before its first event is in the worker
    zygote already: every module of WORKER_PRELOAD (the zygote skips a module another
    Dagster lacks; every Dagster of the tested range has them all, 1.11.10 included) and
    the head of Dagster's schema migrations (`warm_alembic_heads`). The job of the run
    worker it was started for is not in the zygote's own environment, only in each
    worker's."""
    import psutil

    mod = tmp_path / "dm_probe.py"
    mod.write_text(
        "import os, sys\n"
        "from dagster_metaflow.runtime.zygote_server import WORKER_PRELOAD\n"
        "from dagster_metaflow import _dagster_sqlite\n"
        "from dagster._core.storage import sql\n"
        "from dagster_metaflow.runtime import flow\n"
        "print('missing', [m for m in WORKER_PRELOAD if m not in sys.modules])\n"
        "print('memo', getattr(sql.check_alembic_revision, 'remembers_heads', False))\n"
        "print('no run of its own', flow._LIVE_FLOWS == [] and flow._job_run_here == [])\n"
        "print('job', os.environ.get(sys.argv[1]))\n"
        "print('heads', len(_dagster_sqlite._HEADS), flush=True)\n"
    )
    log = tmp_path / "worker.log"
    pool = ZygotePool(zygote.WORKER)
    env = dict(os.environ, **{zygote.RUN_WORKER_ENV: "the first run's job"})
    z = pool.get(sys.executable, env)
    assert z is not None
    try:
        assert zygote.RUN_WORKER_ENV not in psutil.Process(z.proc.pid).environ()
        with open(log, "ab") as f:
            argv = [sys.executable, "-m", "dm_probe", zygote.RUN_WORKER_ENV]
            z.spawn_detached(argv, env, str(tmp_path), f.fileno())
        deadline = time.monotonic() + 30
        while "heads" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pool.close()
    assert log.read_text().splitlines() == [
        "missing []",
        "memo True",
        "no run of its own True",
        "job the first run's job",
        "heads 1",
    ]


def test_a_worker_zygote_skips_only_modules_its_dagster_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_preload_worker`: a module that is not installed is skipped; one of ours, or one that
    fails on a missing import of its own, fails the zygote's start (workers then start the
    plain way)."""
    monkeypatch.setattr("dagster_metaflow._dagster_sqlite.warm_alembic_heads", lambda: None)
    monkeypatch.setattr(zygote_server, "WORKER_PRELOAD", ("json", "dm_no_such_package.sub"))
    zygote_server._preload_worker()
    for broken in ("dagster_metaflow.runtime.dm_no_such_module", "json.dm_no_such_module"):
        monkeypatch.setattr(zygote_server, "WORKER_PRELOAD", ("json", broken))
        if broken.startswith("dagster_metaflow."):
            with pytest.raises(ModuleNotFoundError):
                zygote_server._preload_worker()
        else:  # json is there, its submodule is not: skipped as absent
            zygote_server._preload_worker()
    (tmp_path / "dm_imports_what_is_missing.py").write_text("import dm_really_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(zygote_server, "WORKER_PRELOAD", ("dm_imports_what_is_missing",))
    with pytest.raises(ModuleNotFoundError, match="dm_really_missing"):
        zygote_server._preload_worker()


_DIES_WHILE_ITS_ZYGOTE_STARTS = """
import os, sys, threading, time
from dagster_metaflow.runtime.zygote import ZygotePool
threading.Thread(target=ZygotePool().get, args=(sys.executable, dict(os.environ)), daemon=True).start()
time.sleep(float(sys.argv[1]))
if os.fork() == 0:  # a process of ours still holds the zygote's pipe for a while
    time.sleep(4)
    os._exit(0)
os._exit(0)  # as a command or run worker that ends before its zygote is ready
"""


@pytest.mark.parametrize("lives", [0.05, 3.0])
def test_a_zygote_whose_starter_died_exits_even_if_it_died_during_the_preload(
    lives: float, tmp_path: Path
) -> None:
    """The zygote watches the pid that started it, given on its command line: read after the
    preload, a starter that died meanwhile left it watching init forever (once a process
    still held its pipe, its "ready" did not fail either)."""
    import psutil

    # the zygote's socket lives in the starter's TMPDIR: its command line names it
    env = dict(os.environ, TMPDIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", _DIES_WHILE_ITS_ZYGOTE_STARTS, str(lives)], env=env, timeout=60)

    def zygotes() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            if any(str(tmp_path) in arg for arg in p.info["cmdline"] or ()):
                found.append(p)
        return found

    deadline = time.monotonic() + 20
    while zygotes() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = zygotes()
    for p in left:
        p.kill()
    assert not left, "a zygote outlived the process that started it"
    # nor its socket's directory (its starter, killed, could not remove it)
    assert not list(tmp_path.glob("dm-zygote-*"))


_HANDS_OVER = """
import json, os, sys, time
from dagster_metaflow.runtime.zygote import POOL, STEP, Zygote, zygote_env

script, marker, result, starter_lives, env_differs = sys.argv[1:6]
starter_lives = float(starter_lives)
env = dict(os.environ)
handed = Zygote(sys.executable, zygote_env(env), STEP, wait=False)  # as `trigger` does
if os.fork() == 0:  # the run worker
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # as a run worker: not holding the starter's output open
        os.dup2(devnull, fd)
    POOL.adopt(handed)
    time.sleep(max(0.0, -starter_lives))  # < 0: the starter is gone before the take-over
    steps_env = dict(env, METAFLOW_DEFAULT_METADATA="local") if env_differs == "1" else env
    got = POOL.get(sys.executable, steps_env)
    proc = got.spawn([sys.executable, script, marker], steps_env, None)
    with open(result + ".tmp", "w") as f:
        json.dump({"taken": got is handed, "handed": handed.proc.pid,
                   "zygote": got.proc.pid, "step": proc.pid}, f)
    os.rename(result + ".tmp", result)
    time.sleep(120)  # killed by the test
    os._exit(0)
handed.release()
time.sleep(max(0.0, starter_lives))  # 0: exits at once, as `trigger` without --wait
"""

# the step says whether it carries psutil: a zygote watching the worker that adopted it
# must not import it (every step it forks would)
_STEP_SLEEPS = (
    "import sys, time\n"
    "open(sys.argv[1], 'w').write('started psutil=%s' % ('psutil' in sys.modules))\n"
    "time.sleep(60)\n"
)

# case -> (how long the starter lives after the fork, < 0: gone before the take-over;
#          the worker's steps in another environment; taken over?)
_HAND_OVER_CASES = {
    "taken over, starter exits at once": (0.0, False, True),
    "taken over, starter lives on": (4.0, False, True),
    "starter gone before the take-over": (-3.0, False, None),
    "another environment": (0.0, True, False),
}


@pytest.mark.parametrize("case", list(_HAND_OVER_CASES))
def test_a_zygote_started_for_a_forked_run_worker(case: str, tmp_path: Path) -> None:
    """`trigger` starts the step zygote while it creates the run and forks the worker: the
    worker takes it over and the zygote then lives as long as the worker, not `trigger`
    (which may exit at once). A zygote the worker cannot take (its starter died first, or
    another environment) is not used, and no process is left behind either way."""
    import json

    import psutil

    lives, env_differs, taken = _HAND_OVER_CASES[case]
    script, marker, result = tmp_path / "step.py", tmp_path / "started", tmp_path / "result"
    script.write_text(_STEP_SLEEPS)
    env = dict(os.environ, TMPDIR=str(tmp_path))  # the zygotes' sockets: found by cmdline
    out = subprocess.run(
        [sys.executable, "-c", _HANDS_OVER, str(script), str(marker), str(result), str(lives),
         "1" if env_differs else "0"],
        env=env, capture_output=True, text=True, timeout=90,
    )
    assert out.returncode == 0, out.stderr

    def ours() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and any(
                    str(tmp_path) in arg for arg in p.info["cmdline"] or ()
                ):
                    found.append(p)
            except psutil.Error:
                pass
        return found

    try:
        deadline = time.monotonic() + 30
        while not (result.exists() and marker.exists()) and time.monotonic() < deadline:
            time.sleep(0.1)  # the step writes its marker once it runs, after the result
        seen = json.loads(result.read_text())
        assert marker.exists(), "the worker's step never started"
        time.sleep(0.3)  # the step's one write
        assert marker.read_text() == "started psutil=False"
        if taken is not None:
            assert seen["taken"] is taken
        if not seen["taken"]:
            assert seen["handed"] != seen["zygote"]
        time.sleep(1.5)  # the starter has exited: a zygote still watching it is gone now
        running = {p.pid for p in ours()}
        assert {seen["zygote"], seen["step"]} <= running
        worker = next(p for p in ours() if "POOL.adopt" in " ".join(p.cmdline()))
        worker.kill()  # the run worker dies: its zygote stops the step and exits
        deadline = time.monotonic() + 25
        while ours() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = ours()
    finally:
        for p in ours():
            try:
                p.kill()
            except psutil.Error:
                pass
    assert not left, f"left behind: {[p.cmdline() for p in left]}"


_EXITS_WITH_A_STEP_RUNNING = """
import os, sys
from dagster_metaflow.runtime.zygote import POOL
env = dict(os.environ)
proc = POOL.get(sys.executable, env).spawn([sys.executable, sys.argv[1], sys.argv[2]], env, None)
while not os.path.exists(sys.argv[2]):
    pass
print(proc.pid, flush=True)
raise SystemExit(1)  # a run worker ending by an error: its exit closes the pool
"""


def test_steps_do_not_outlive_a_worker_that_exits_while_they_run(tmp_path: Path) -> None:
    """Closing a zygote (the worker's exit closes its pool) stops the steps it started, as
    its watch does when the worker is killed."""
    import psutil

    script, marker = tmp_path / "step.py", tmp_path / "started"
    script.write_text(_STEP_SLEEPS)
    out = subprocess.run(
        [sys.executable, "-c", _EXITS_WITH_A_STEP_RUNNING, str(script), str(marker)],
        capture_output=True, text=True, timeout=60,
    )
    step = int(out.stdout.split()[0])
    deadline = time.monotonic() + 15
    while psutil.pid_exists(step) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = psutil.pid_exists(step)
    if alive:
        os.kill(step, 9)
    assert not alive, "a step outlived its run worker"


@pytest.mark.parametrize("in_run_worker", [True, False])
def test_a_run_worker_s_flows_start_their_zygote_when_defined(
    in_run_worker: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a run worker our launcher started, the run's flow starts its step zygote as soon
    as the definitions define it (other flows of the file do not); the variable naming it
    is not passed on to what the worker starts (its steps). Elsewhere (webserver, daemon,
    code server) defining a flow starts nothing."""
    from dagster_metaflow.runtime import flow as flow_module

    asked: list[str] = []
    started = threading.Event()

    def get(python: str, env: dict[str, str]) -> None:
        asked.append(env.get("METAFLOW_RUNTIME_NAME", ""))
        started.set()

    monkeypatch.setattr(zygote.POOL, "get", get)
    monkeypatch.setattr(flow_module, "fork_enabled", lambda: True)
    monkeypatch.setattr(flow_module, "_job_run_here", [])
    monkeypatch.setattr("dagster_metaflow._dagster_sqlite.remember_alembic_heads", lambda: None)
    monkeypatch.setattr(flow_module.TaskStore, "open", lambda self: None)
    monkeypatch.setattr(flow_module, "_LIVE_FLOWS", [])
    if in_run_worker:
        env = flow_module.run_worker_env("EarlyJob", {"metaflow/flow": "EarlyFlow"})
        monkeypatch.setenv(zygote.RUN_WORKER_ENV, env)
    else:
        monkeypatch.delenv(zygote.RUN_WORKER_ENV, raising=False)
    # not the run's: another flow, and the run's flow compiled as another job
    flow_module.MetaflowFlow(name="OtherFlow", file="other_flow.py")
    flow_module.MetaflowFlow(name="EarlyFlow", file="early_flow.py", job_name="OtherJob")
    flow_module.MetaflowFlow(name="EarlyFlow", file="early_flow.py", job_name="EarlyJob")
    assert started.wait(10 if in_run_worker else 0.5) is in_run_worker
    time.sleep(0.2)
    assert asked == (["dagster"] if in_run_worker else [])  # the run's flow only
    assert zygote.RUN_WORKER_ENV not in os.environ


# a run worker forked by a worker zygote (`python -m dm_takes_spare result steps_env`);
# with a third argument it ends at once, without taking anything over (as if killed)
_TAKES_THE_SPARE = """
import json, os, sys
from dagster_metaflow.runtime import zygote

result, steps_env = sys.argv[1], json.loads(sys.argv[2])
handed = [z.proc.pid for z in zygote.POOL._handed.values()]
if len(sys.argv) > 3:
    with open(result, "w") as f:
        json.dump({"handed": handed}, f)
    os._exit(0)
got = zygote.POOL.get(sys.executable, steps_env)
proc = got.spawn([sys.executable, os.path.join(os.getcwd(), "dm_step.py")], steps_env, None)
out = proc.stdout.read().decode().strip()
proc.wait(30)
with open(result + ".tmp", "w") as f:
    json.dump({"handed": handed, "zygote": got.proc.pid, "step_said": out}, f)
os.rename(result + ".tmp", result)
"""


def test_a_worker_zygote_hands_the_spare_step_zygote_of_a_job_to_its_next_run_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the end of a run, its worker asks the worker zygote for a spare step zygote of its
    job; the next worker of that job starts with it, ready (its steps fork from it), and
    closes it when it exits. A worker of another job gets none; a worker that ends before
    taking its spare over has it stopped by the worker zygote; a newer spare of a job
    replaces the older; a spare nobody took ends with the worker zygote. Nothing is left."""
    import json

    import psutil

    (tmp_path / "dm_takes_spare.py").write_text(_TAKES_THE_SPARE)
    (tmp_path / "dm_step.py").write_text("print('step ran')\n")
    env = dict(os.environ)
    steps_env = zygote.zygote_env(dict(env, METAFLOW_RUNTIME_NAME="dagster"))
    job = zygote.worker_job_key("TheJob", "TheFlow")
    pool = ZygotePool(zygote.WORKER)
    worker_zygote = pool.get(sys.executable, env)
    assert worker_zygote is not None
    monkeypatch.setattr(zygote, "_worker_zygote", [worker_zygote.path])  # as in a worker
    spares: list[int] = []

    def ask(for_job: str) -> int:
        """A spare for `for_job`, once ready (as a spare usually is when the next run comes)."""
        spare = zygote.request_spare(for_job, sys.executable, steps_env)
        assert spare in [p.pid for p in psutil.Process(worker_zygote.proc.pid).children()]
        spares.append(spare)
        deadline = time.monotonic() + 30
        # `... serve(...) SOCK step PARENT` once exec'd: just forked, the spare still shows
        # the worker zygote's command line (its own socket, mode `worker`), and none mid-exec
        while (cmd := psutil.Process(spare).cmdline())[-2:-1] != ["step"]:
            assert time.monotonic() < deadline, cmd
            time.sleep(0.01)
        sock = cmd[-3]
        while not os.path.exists(sock):  # bound once preloaded, just before "ready"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        return spare

    def worker(run_job: str, name: str, *extra: str) -> dict[str, object]:
        result = tmp_path / name
        with open(tmp_path / "worker.log", "ab") as log:
            worker_zygote.spawn_detached(
                [sys.executable, "-m", "dm_takes_spare", str(result), json.dumps(steps_env), *extra],
                dict(env, **{zygote.RUN_WORKER_ENV: run_job}), str(tmp_path), log.fileno(),
            )
        deadline = time.monotonic() + 60
        while not result.exists():
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.05)
        return json.loads(result.read_text())

    try:
        spare = ask(job)
        first = worker(job, "first.json")
        assert first == {"handed": [spare], "zygote": spare, "step_said": "step ran"}
        assert survivors([spare], within=10) == []  # the first worker closed it when it exited
        other = worker(zygote.worker_job_key("OtherJob", "TheFlow"), "other.json")
        assert other["handed"] == [] and other["zygote"] != spare
        second = worker(job, "second.json")  # the spare was taken: none until asked again
        assert second["handed"] == []
        dropped = ask(job)
        gone = worker(job, "gone.json", "exit")  # ends before taking it over
        assert gone["handed"] == [dropped]
        assert survivors([dropped], within=10) == [], "the spare of a worker that never took it over"
        older = ask(job)
        newer = ask(job)
        assert survivors([older], within=10) == [] and survivors([newer], within=0) == [newer]
        unused = ask(zygote.worker_job_key("OtherJob", "TheFlow"))
        assert survivors([unused], within=0) == [unused]
    finally:
        pool.close()
    assert survivors(spares, within=10) == [], "a spare outlived its worker zygote"


@pytest.mark.parametrize(
    ("argv", "job"),
    [
        (["/venv/bin/dagster", "job", "execute", "-f", "f.py", "-j", "J"], ("J", None)),
        (["/venv/bin/dagster", "job", "execute", "-f", "f.py", "--job", "J"], ("J", None)),
        (["/venv/bin/dagster", "job", "execute", "--job=J", "-f", "f.py"], ("J", None)),
        (["/venv/bin/dagster", "job", "execute", "-jJ", "-f", "f.py"], ("J", None)),
        (["/venv/bin/dagster", "job", "execute", "-f", "f.py"], (None, None)),  # its only job
        (["/venv/bin/dagster", "job", "launch", "-f", "f.py", "-j", "J"], None),
        (["/venv/bin/dagster", "dev", "-f", "f.py"], None),
        (["/venv/bin/dagster-webserver", "-f", "f.py"], None),
        ([], None),
    ],
)
def test_dagster_job_execute_runs_its_job_in_this_process(
    argv: list[str], job: tuple[str | None, None] | None
) -> None:
    """`dagster job execute` runs the job in the process that loads the definitions: its
    flow starts its step zygote when defined; other commands only load definitions."""
    from dagster_metaflow.runtime.flow import _job_of_dagster_job_execute

    assert _job_of_dagster_job_execute(argv) == job


def test_a_run_worker_asks_for_its_job_s_spare_without_its_own_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The spare's environment is the job's step environment without the asking worker's
    identity: a spare carrying it would be taken for that worker's orphan (and stopped
    with it) while it serves the next run."""
    from dagster_metaflow.runtime import flow as flow_module
    from dagster_metaflow.runtime.worker import RECOVERING_VAR, WORKER_VAR

    asked: list[tuple[str, dict[str, str]]] = []
    monkeypatch.setattr(flow_module, "fork_enabled", lambda: True)
    monkeypatch.setattr(flow_module, "_LIVE_FLOWS", [])
    monkeypatch.setattr(flow_module, "_job_run_here", [("TheJob", "TheFlow")])
    monkeypatch.setattr(flow_module, "request_spare", lambda job, py, env: asked.append((job, env)))
    # defining the job's flow here warms it up as in a run worker: not in this test
    monkeypatch.setattr("dagster_metaflow._dagster_sqlite.remember_alembic_heads", lambda: None)
    monkeypatch.setattr(flow_module.TaskStore, "open", lambda self: None)
    monkeypatch.setattr(flow_module.MetaflowFlow, "warm_up", lambda self: None)
    monkeypatch.setenv(WORKER_VAR, "host/123/456.00")
    monkeypatch.setenv(RECOVERING_VAR, "1")
    flow_module.MetaflowFlow(name="TheFlow", file="the_flow.py", job_name="OtherJob")
    flow_module.MetaflowFlow(name="TheFlow", file="the_flow.py", job_name="TheJob")
    flow_module.request_spare_zygote()
    [(job, env)] = asked
    assert job == zygote.worker_job_key("TheJob", "TheFlow")
    assert env["METAFLOW_RUNTIME_NAME"] == "dagster"
    assert WORKER_VAR not in env and RECOVERING_VAR not in env


def test_a_closed_zygote_runs_its_exit_handlers_and_exits_zero(tmp_path: Path) -> None:
    """A zygote skips the interpreter's teardown of its preloaded modules when its pool
    closes it (`_exit_now`), not its atexit handlers (here one a sitecustomize registers)."""
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "atexit-ran"
    (site / "sitecustomize.py").write_text(
        "import atexit, pathlib\n"
        f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    z = Zygote(sys.executable, zygote.zygote_env(env), zygote.STEP)
    assert z.alive()
    z.close()
    assert z.proc.returncode == 0
    assert marker.read_text() == "yes"
    assert not os.path.exists(z.path)
