"""The step token: a variable every process of a step inherits, by which the supervisor
finds the step's descendants that left its session (`supervise`), and its place in the
/proc environment of a step the zygote forked.

Its own module, standard library only: the step zygote imports it, and every step it
forks carries what it imported.
"""

from __future__ import annotations

import os

TOKEN_VAR = "DAGSTER_METAFLOW_STEP_TOKEN"


def expose_token() -> bool:
    """In a step the zygote forked, after its title is set: write `TOKEN_VAR=<token>` at the
    end of this process's /proc environment block.

    A plain `python flow.py step` has its whole environment there, and so has anything it
    forks without exec; a forked step has the block its zygote was started with, which
    setproctitle cleared for the title. Without this, a descendant forked without exec
    (a daemonizing library) that leaves the step's session carries no token the supervisor
    can read, and outlives a step that ends before the supervisor's first look. Written
    only into bytes that are still zero (never over the title), through /proc/self/mem;
    False when it could not be (no /proc, a block too small or in use)."""
    value = os.environ.get(TOKEN_VAR)
    if not value:
        return False
    entry = f"{TOKEN_VAR}={value}\0".encode()
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end: fields 50, 51
        at = end - len(entry)
        if at < start:
            return False
        fd = os.open("/proc/self/mem", os.O_RDWR)
        try:
            if os.pread(fd, len(entry), at) != bytes(len(entry)):
                return False
            return os.pwrite(fd, entry, at) == len(entry)
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return False
