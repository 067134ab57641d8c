"""The run host's temp-directory caches stay bounded: code packages, config files and per-run
lock files unused for the retention are swept, nothing in use is, the locks stay sound while
a sweep unlinks their files, and a cache directory that is not the user's own is refused
(runtime/hostfiles.py)."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagster_metaflow.runtime import hostfiles
from dagster_metaflow.runtime.command import _content_file
from dagster_metaflow.runtime.hostfiles import (
    LEGACY_SEEN,
    RETENTION_VAR,
    STAMP,
    SWEEP_THREAD,
    host_dir,
    locked,
    retention_seconds,
    sweep,
)
from dagster_metaflow.runtime.package import extracted
from dagster_metaflow.runtime.resume import OncePerRun

DAY = 86400.0


@pytest.fixture(autouse=True)
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every cache of these tests under the test's own temp directory."""
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    monkeypatch.delenv(RETENTION_VAR, raising=False)
    yield tmp_path
    _swept()


class _Store:
    """A flow datastore holding code packages by sha (what `extracted` loads from)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.loads = 0

    def add(self, sha: str, files: dict[str, str]) -> dict[str, str]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        self.blobs[sha] = buf.getvalue()
        return {"sha": sha}

    def load_data(self, keys: list[str], force_raw: bool = False):  # type: ignore[no-untyped-def]
        self.loads += 1
        return [(k, self.blobs[k]) for k in keys if k in self.blobs]


def _age(path: str | Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _swept() -> None:
    """Wait for the sweeps started in the background (`hostfiles.sweep_in_background`)."""
    for thread in threading.enumerate():
        if thread.name == SWEEP_THREAD:
            thread.join(30)


def _due(kind: str) -> None:
    os.utime(os.path.join(host_dir(kind), STAMP), (0, 0))


def test_the_caches_are_per_user_directories_under_the_temp_directory(own_tmp: Path) -> None:
    code = host_dir("code")
    assert code == str(own_tmp / f"dagster_metaflow_code-{os.getuid()}")
    assert os.stat(code).st_mode & 0o777 == 0o700


def test_a_package_is_extracted_once_and_marked_used_at_every_use() -> None:
    store = _Store()
    pkg = store.add("a" * 40, {"flow.py": "print('hi')\n"})
    root = extracted(store, pkg)
    assert Path(root, "flow.py").read_text() == "print('hi')\n"
    _age(root, 3 * DAY)
    assert extracted(store, pkg) == root
    assert store.loads == 1
    assert time.time() - os.stat(root).st_mtime < 60


def test_a_new_package_sweeps_the_ones_unused_for_the_retention_and_keeps_the_rest() -> None:
    store = _Store()
    old = extracted(store, store.add("1" * 40, {"flow.py": "old"}))
    recent = extracted(store, store.add("2" * 40, {"flow.py": "recent"}))
    _swept()
    base = os.path.dirname(old)
    abandoned = Path(base, ".333333333333-x")  # an extraction whose process died
    abandoned.mkdir()
    _age(old, 8 * DAY)
    _age(recent, 6 * DAY)
    _age(abandoned, 2 * DAY)
    _age(Path(base, STAMP), 2 * 3600)
    extracted(store, store.add("4" * 40, {"flow.py": "new"}))
    _swept()
    names = sorted(os.listdir(base))
    assert names == sorted([STAMP, "2" * 40, "2" * 40 + ".lock", "4" * 40, "4" * 40 + ".lock"])


def test_a_package_in_use_or_used_again_is_not_swept(own_tmp: Path) -> None:
    store = _Store()
    held = extracted(store, store.add("1" * 40, {"flow.py": "x"}))
    _swept()
    _age(held, 30 * DAY)
    _due("code")
    with locked(held + ".lock", shared=True):  # a step launch checking it right now
        assert sweep("code") == []
    assert os.path.isdir(held)
    _due("code")
    os.utime(held)  # used again since
    assert sweep("code") == []
    _age(held, 30 * DAY)
    _due("code")
    assert sweep("code") == ["1" * 40]
    assert not os.path.exists(held) and not os.path.exists(held + ".lock")
    # used after its removal: extracted again
    assert Path(extracted(store, {"sha": "1" * 40}), "flow.py").read_text() == "x"


def test_sweeps_are_at_most_hourly_and_the_retention_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _Store()
    pkg = extracted(store, store.add("1" * 40, {"flow.py": "x"}))
    _swept()
    _age(pkg, 2 * DAY)
    assert sweep("code") == []  # the first extraction just swept
    _due("code")
    for off in ("off", "0", "0.0", " No "):
        monkeypatch.setenv(RETENTION_VAR, off)
        assert sweep("code") == [] and os.path.isdir(pkg)
    monkeypatch.setenv(RETENTION_VAR, "1.5")
    assert sweep("code") == ["1" * 40]


@pytest.mark.parametrize(
    ("value", "kept", "said"),
    [
        ("soon", None, "is not a number of days"),
        ("-2", None, "is not a number of days"),
        ("nan", None, "is not a number of days"),
        ("inf", None, "is not a number of days"),
        ("0.001", 3600.0, "is under an hour; one hour is kept"),
        ("0.5", 43200.0, ""),
    ],
)
def test_a_retention_that_is_not_a_usable_number_of_days_is_said_once(
    value: str, kept: float | None, said: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hostfiles, "_WARNED", set())
    monkeypatch.setenv(RETENTION_VAR, value)
    assert retention_seconds() == kept
    assert retention_seconds() == kept
    err = capsys.readouterr().err
    if said:
        assert err.count(RETENTION_VAR) == 1 and said in err
    else:
        assert err == ""


def test_run_lock_files_are_swept_after_the_retention_and_the_preparation_runs_once() -> None:
    once = OncePerRun()
    calls: list[str] = []
    once.once("run-a", lambda: calls.append("a"))
    once.once("run-a", lambda: calls.append("again"))
    assert OncePerRun().once("run-a", lambda: calls.append("other process")) is None
    assert calls == ["a"]
    _swept()
    runs = host_dir("runs")
    _age(os.path.join(runs, "run-a.lock"), 8 * DAY)
    OncePerRun().once("run-a", lambda: calls.append("a again"))  # a new process of the run
    assert time.time() - os.stat(os.path.join(runs, "run-a.lock")).st_mtime < 60
    _swept()
    _age(os.path.join(runs, "run-a.lock"), 8 * DAY)
    _due("runs")
    OncePerRun().once("run-b", lambda: calls.append("b"))
    _swept()
    assert calls == ["a", "b"]
    assert sorted(os.listdir(runs)) == [STAMP, "run-b.lock"]
    assert sweep("runs") == []


def test_a_lock_waiting_on_a_file_a_sweep_unlinked_takes_the_new_file(
    own_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(own_tmp / "x.lock")
    opened: list[str] = []
    real_open = os.open

    def counting_open(name: str, *args: int) -> int:
        opened.append(name)
        return real_open(name, *args)

    monkeypatch.setattr(os, "open", counting_open)
    got: list[int] = []
    with locked(path) as fd:
        assert fd is not None
        waiter = threading.Thread(target=lambda: _hold(path, got))
        waiter.start()
        deadline = time.monotonic() + 10
        while _open_count(path) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _open_count(path) == 2  # the waiter has opened the file and waits for the lock
        os.unlink(path)
    waiter.join(10)
    # the waiter got the unlinked file's lock, saw it gone and locked the new one
    assert opened.count(path) == 3
    assert got and got[0] == os.stat(path).st_ino


def _open_count(path: str) -> int:
    """How many of this process's fds are open on `path`."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == path
    return count


def _hold(path: str, got: list[int]) -> None:
    with locked(path) as fd:
        assert fd is not None
        got.append(os.fstat(fd).st_ino)


def test_a_lock_not_waited_for_yields_none_while_held(own_tmp: Path) -> None:
    path = str(own_tmp / "y.lock")
    with locked(path, shared=True):
        with locked(path, wait=False) as fd:
            assert fd is None
        with locked(path, shared=True, wait=False) as fd:
            assert fd is not None


def test_config_files_are_written_once_marked_used_and_swept_like_packages() -> None:
    path = _content_file("configs", '{"a": 1}')
    assert Path(path).read_text() == '{"a": 1}'
    assert os.path.dirname(path) == host_dir("configs")
    _swept()
    _age(path, 3 * DAY)
    assert _content_file("configs", '{"a": 1}') == path
    assert time.time() - os.stat(path).st_mtime < 60
    _age(path, 8 * DAY)
    _due("configs")
    other = _content_file("configs", '{"b": 2}')
    _swept()
    assert sorted(os.listdir(host_dir("configs"))) == sorted([STAMP, Path(other).name, Path(other).name + ".lock"])


def test_the_directories_of_earlier_versions_are_swept_from_a_retention_after_first_seen(
    own_tmp: Path,
) -> None:
    """Their entries were never marked used: nothing goes until the retention has passed
    since this version first swept beside them, then what is old goes, then the directory."""
    legacy = own_tmp / "dagster_metaflow_code"
    (legacy / ("9" * 40)).mkdir(parents=True)
    (legacy / ("9" * 40 + ".lock")).touch()
    (legacy / ("8" * 40)).mkdir()
    _age(legacy / ("9" * 40), 30 * DAY)
    _age(legacy / ("9" * 40 + ".lock"), 30 * DAY)
    _age(legacy / ("8" * 40), 1 * DAY)
    store = _Store()
    extracted(store, store.add("1" * 40, {"flow.py": "x"}))
    _swept()
    assert sorted(os.listdir(legacy)) == sorted(["9" * 40, "9" * 40 + ".lock", "8" * 40])
    _age(os.path.join(host_dir("code"), LEGACY_SEEN), 8 * DAY)
    _due("code")
    assert sweep("code") == [f"{legacy}/{'9' * 40}"]  # its lock file with it
    assert sorted(os.listdir(legacy)) == ["8" * 40]
    _age(legacy / ("8" * 40), 8 * DAY)
    _due("code")
    assert sweep("code") == [f"{legacy}/{'8' * 40}"]
    assert not legacy.exists()
    assert LEGACY_SEEN in os.listdir(host_dir("code"))  # kept: not an abandoned temporary


def test_a_cache_directory_that_is_not_the_user_s_own_is_refused(own_tmp: Path) -> None:
    elsewhere = own_tmp / "elsewhere"
    elsewhere.mkdir()
    (own_tmp / f"dagster_metaflow_code-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match="not a directory of this user"):
        host_dir("code")
    loose = own_tmp / f"dagster_metaflow_runs-{os.getuid()}"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    assert host_dir("runs") == str(loose) and os.stat(loose).st_mode & 0o777 == 0o700
    if os.getuid() == 0:  # someone else's directory
        theirs = own_tmp / "dagster_metaflow_configs-0"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(RuntimeError, match="uid 65534"):
            host_dir("configs")
