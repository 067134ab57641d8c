"""When a process started, in a form no clock adjustment moves: with the pid, it tells a
process from a later one the kernel gave the same pid (run workers, zygotes).

psutil's `create_time()` is seconds since the epoch: the process's start in clock ticks since
boot plus /proc/stat's `btime`, a whole number of seconds the kernel derives from the wall
clock each time it is read. As NTP slews the clock, `btime` moves by one second now and then
(on a machine whose true boot time lies near a whole second, often), and the same process
then has another `create_time()`: on 2026-12-08 a reader took a live run worker for dead
and failed its run. The start in clock ticks since boot (/proc/<pid>/stat, field 22) and
the boot's id never move. Standard library only: the watchdog imports this before anything
else.
"""

from __future__ import annotations

import functools

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def procfs() -> bool:
    """Whether this host's processes can be read this way (Linux)."""
    return boot_id() is not None


@functools.cache  # a process never outlives its boot: read once, not at every identity check
def boot_id() -> str | None:
    """This boot's id (a reboot restarts pids and ticks), None without procfs."""
    try:
        with open(BOOT_ID_FILE) as f:
            return f.read().strip() or None
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """Process `pid`'s start in clock ticks since boot; None if it is gone, a zombie, or
    cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # the command name (field 2) is in parentheses and may hold spaces or parentheses
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] == b"Z":
            return None
        return int(fields[19])  # field 22: fields[0] is field 3, the state
    except (OSError, ValueError, IndexError):
        return None


def tag_pid(tag: str) -> int | None:
    """The pid in a worker identity tag (`host/pid/started[/ticks@boot]`), read without
    parsing the rest (worker.WorkerIdentity does that)."""
    parts = tag.split("/")
    if len(parts) >= 4 and "@" in parts[-1]:
        parts = parts[:-1]
    try:
        return int(parts[-2]) if len(parts) >= 3 else None
    except ValueError:
        return None
