"""What a run host keeps under its temp directory, and how it stays bounded.

Three caches live in `<tmp>/dagster_metaflow_<kind>-<uid>`, one private directory per user
(a directory another user made is refused: on a shared host it was not writable by the next
user, and code found in it would run as ours):
- `code`: the extracted code packages (`package.extracted`), ~7 MB each, one per deployed
  version of a flow;
- `configs`: a deployment's config values as the file Metaflow reads (`command`);
- `runs`: one small lock file per Dagster run, which makes a run's preparation happen once
  per host (`resume.OncePerRun`).
Each grew forever (a host that had run Metaflow's core harness kept 884 packages, 3 GB, and
a lock file per run). Now an entry is marked used (its mtime) whenever a step or an op of a
run uses it, and one unused for `DAGSTER_METAFLOW_HOST_FILES_DAYS` days (default 7; `0`,
`off`, `false` or `no` keep everything; at least an hour) is removed, in a background
thread, by a process that adds an entry (a package, a config file) or prepares a run (the
runs' locks), at most once an hour per directory (`.swept` stamps the last sweep). The
directories of earlier versions (no uid in their name) are swept the same way once the
retention has passed since this version first saw them (their entries were never marked
used: `.legacy-seen`), then removed once empty.

An entry is made, used and removed under its own lock (`<entry>.lock`): a user holds it
shared, a maker exclusive, a sweep exclusive without waiting, so an entry in use is skipped
and one used since the sweep looked at it is kept (its time is read again under the lock).
Under the lock an entry is only renamed aside and its lock file unlinked (a lock is held
only on the file still at its path: `locked` opens it again otherwise); it is deleted after.
A sweep never fails the process asking.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

from .switches import OFF_WORDS

RETENTION_VAR = "DAGSTER_METAFLOW_HOST_FILES_DAYS"
DEFAULT_DAYS = 7.0
MIN_KEEP = 3600.0  # a shorter retention is raised to this (said on stderr)
SWEEP_EVERY = 3600.0  # seconds between two sweeps of one directory
STAMP = ".swept"
# when this version first swept beside an earlier version's directory: that directory's
# entries were never marked used, so none is removed until the retention has passed since
LEGACY_SEEN = ".legacy-seen"
# a temporary entry (`.<name>...`: an extraction, a file being written) older than this was
# abandoned by a process that died: making an entry takes seconds
ABANDONED = 24 * 3600.0
LOCK_SUFFIX = ".lock"


def host_dir(kind: str) -> str:
    """`<tmp>/dagster_metaflow_<kind>-<uid>`, made private to this user if missing; one that
    is not this user's own directory is refused (RuntimeError naming it)."""
    path = os.path.join(tempfile.gettempdir(), f"dagster_metaflow_{kind}-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a directory"
        raise RuntimeError(
            f"dagster-metaflow: {path} is {what} of uid {st.st_uid}, not a directory of this "
            f"user (uid {os.getuid()}): remove it"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def cached(kind: str, name: str, make: Callable[[str], None]) -> str:
    """`<host_dir(kind)>/<name>`, made by `make(path)` if missing, marked used now. `make`
    runs under the entry's exclusive lock and must create `path` atomically (build it under
    a name starting with "." in the same directory, then rename it). A new entry sweeps its
    directory."""
    base = host_dir(kind)
    path = os.path.join(base, name)
    lock = path + LOCK_SUFFIX
    with locked(lock, shared=True):
        if touch(path):
            return path
    with locked(lock):
        if touch(path):
            return path
        make(path)
    sweep_in_background(kind)
    return path


@contextlib.contextmanager
def locked(path: str, shared: bool = False, wait: bool = True) -> Iterator[int | None]:
    """Hold a flock on the file at `path` (created if missing); yields its fd, or None when
    `wait` is False and someone else holds it."""
    fd = _lock(path, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    try:
        yield fd
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):  # for every copy of the fd, a forked child's too
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _lock(path: str, mode: int) -> int | None:
    """An fd of the file at `path` holding the lock `mode` (None: LOCK_NB and it is held).
    The file is the one still at `path` once locked: a sweep may have unlinked the one
    opened, and a lock on that one would exclude nobody."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        current = False
        try:
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                return None
            with contextlib.suppress(FileNotFoundError):
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            if current:
                return fd
        finally:
            if not current:
                os.close(fd)


def touch(path: str) -> bool:
    """Mark `path` used now; False if it is gone."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def retention_seconds() -> float | None:
    """How long an unused entry is kept (None: forever), from RETENTION_VAR. A value that is
    not a number of days keeps everything, one under an hour is raised to an hour; either is
    said on stderr (once per process and value)."""
    raw = os.environ.get(RETENTION_VAR, "").strip().lower()
    if not raw:
        return DEFAULT_DAYS * 86400
    if raw in OFF_WORDS:  # as the runtime's switches read "off"
        return None
    try:
        days = float(raw)
    except ValueError:
        days = float("nan")
    if days == 0:
        return None
    if not 0 < days < float("inf"):
        _say(raw, "is not a number of days; nothing under the temp directory is removed")
        return None
    if days * 86400 < MIN_KEEP:
        _say(raw, "is under an hour; one hour is kept")
        return MIN_KEEP
    return days * 86400


def _say(raw: str, what: str) -> None:
    if raw not in _WARNED:
        _WARNED.add(raw)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"dagster-metaflow: {RETENTION_VAR}={raw!r} {what}\n")


_WARNED: set[str] = set()


def sweep(kind: str, now: float | None = None) -> list[str]:
    """Remove what `host_dir(kind)` (and the directory earlier versions used for it) holds
    unused for the retention, if a sweep is due; returns what was removed. Never raises."""
    try:
        due = _due_sweep(kind, time.time() if now is None else now)
    except Exception:
        return []
    return [] if due is None else _sweep(*due)


def sweep_in_background(kind: str) -> None:
    """`sweep(kind)`, when due (one `stat` decides), in a daemon thread: off the path of the
    step being started (the first sweep of a long-used host removes thousands of files). One
    cut short by the process's exit leaves a `.removing-*` directory, which a later sweep
    removes. The directories are this thread's (its temp directory), not what the sweeping
    thread would find later."""
    try:
        due = _due_sweep(kind, time.time())
        if due is not None:
            threading.Thread(target=_sweep, args=due, name=SWEEP_THREAD, daemon=True).start()
    except Exception:  # RuntimeError: no new thread at the interpreter's shutdown
        pass


def _due_sweep(kind: str, now: float) -> tuple[str, str, float, float] | None:
    """`_sweep`'s arguments if a sweep of `kind` is due (the directory then stamped swept)."""
    base = host_dir(kind)
    keep = _due(base, now)
    return None if keep is None else (base, _legacy_dir(kind), now, keep)


SWEEP_THREAD = "dagster-metaflow:sweep"


def _legacy_dir(kind: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"dagster_metaflow_{kind}")


def _sweep(base: str, legacy: str, now: float, keep: float) -> list[str]:
    """A due sweep's work; what it removed before an error (none is raised)."""
    removed: list[str] = []
    with contextlib.suppress(Exception):
        removed += [n for n in _names(base) if _sweep_entry(base, n, now, keep)]
        st = os.lstat(legacy)  # FileNotFoundError: no earlier version's directory
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and _legacy_due(base, now, keep):
            removed += [f"{legacy}/{n}" for n in _names(legacy) if _sweep_entry(legacy, n, now, keep)]
            if not _names(legacy):
                os.rmdir(legacy)
    return removed


def _legacy_due(base: str, now: float, keep: float) -> bool:
    """Whether the retention has passed since this version first saw the earlier version's
    directory (processes of the earlier version may use its entries until they end)."""
    seen = os.path.join(base, LEGACY_SEEN)
    if not os.path.exists(seen):
        _stamp(seen, now)
    return now - os.stat(seen).st_mtime > keep


def _due(directory: str, now: float) -> float | None:
    """The retention if `directory` is due for a sweep (then stamped swept), else None."""
    stamp = os.path.join(directory, STAMP)
    with contextlib.suppress(FileNotFoundError):
        if now - os.stat(stamp).st_mtime < SWEEP_EVERY:
            return None
    keep = retention_seconds()
    if keep is not None:
        _stamp(stamp, now)
    return keep


def _stamp(path: str, when: float) -> None:
    """A file at `path` (made if missing) whose mtime says `when`."""
    with open(path, "a"):
        pass
    os.utime(path, (when, when))


def _sweep_entry(directory: str, name: str, now: float, keep: float) -> bool:
    """Remove one entry (with its lock file), a lock file whose entry is gone, or an
    abandoned temporary entry, if it is due; True if removed. An error (another user's
    file, say) leaves it."""
    path = os.path.join(directory, name)
    try:
        if name.startswith("."):
            if name in (STAMP, LEGACY_SEEN) or not _older(path, now, ABANDONED):
                return False
            shutil.rmtree(_set_aside(path, directory), ignore_errors=True)
            return True
        if name.endswith(LOCK_SUFFIX):
            if os.path.lexists(path[: -len(LOCK_SUFFIX)]) or not _older(path, now, keep):
                return False
            with locked(path, wait=False) as fd:
                if fd is None or not _older(path, now, keep):
                    return False
                os.unlink(path)
                return True
        if not _older(path, now, keep):
            return False
        with locked(path + LOCK_SUFFIX, wait=False) as fd:
            if fd is None or not _older(path, now, keep):
                return False
            aside = _set_aside(path, directory)
            os.unlink(path + LOCK_SUFFIX)
        shutil.rmtree(aside, ignore_errors=True)  # outside the lock: a maker need not wait
        return True
    except OSError:
        return False


def _names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def _older(path: str, now: float, seconds: float) -> bool:
    try:
        return now - os.lstat(path).st_mtime > seconds
    except FileNotFoundError:
        return False


def _set_aside(path: str, directory: str) -> str:
    """Move `path` (atomically: no reader sees half of it) into a new `.removing-*`
    directory, returned for deletion; OSError if it cannot be moved."""
    trash = tempfile.mkdtemp(prefix=".removing-", dir=directory)
    try:
        os.rename(path, os.path.join(trash, "entry"))
    except OSError:
        os.rmdir(trash)
        raise
    return trash
