"""What a zygote and its clients agree on (`zygote.py` starts and asks one,
`zygote_server.py` is the zygote process): its modes and start-up slots, and one request
on a Unix socket: a length-prefixed JSON body with the child's stdout/stderr descriptors
attached (SCM_RIGHTS), answered by a line with the pid it concerns and, for a command,
later a line with the child's exit status. And `live_start_time`, how either side tells a
live process from a later one that reused its pid.

Standard library only at import (psutil only inside `live_start_time`, which a step zygote
calls only where the kernel has no pidfds): a step zygote imports it before Metaflow, and
every step it forks carries it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from typing import Any

HEADER = struct.Struct("!I")
STEP, WORKER = "step", "worker"
# set by our run launcher in the environment of the run workers it starts, to the run's job
# (`zygote.worker_job_key`); a worker zygote hands the spare step zygote of that job to the worker
RUN_WORKER_ENV = "DAGSTER_METAFLOW_RUN_WORKER"
TOKEN_VAR = "DAGSTER_METAFLOW_STEP_TOKEN"  # as `supervise`'s, which a zygote does not import
TOKEN_SLOT = "0" * 32  # a step's token is 32 hex digits (`uuid4().hex`)
# a zygote's socket is `<tmp>/<prefix>XXXXXXXX/sock`; the zygote and its client both remove
# the socket and the directory when they end (`remove_socket`: the first one to try does)
SOCKET_DIR_PREFIX = "dm-zygote-"


def remove_socket(path: str) -> None:
    """A zygote's socket at `path` and its directory (ours by its name). The zygote and its
    client each call this as they end; a zygote whose client died would leave both."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    folder = os.path.dirname(path)
    if os.path.basename(folder).startswith(SOCKET_DIR_PREFIX):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


class ZygoteUnavailable(Exception):
    """The zygote could not take a command; nothing was started."""


def send_request(
    path: str, request: Mapping[str, Any], fds: Sequence[int], timeout: float | None = None
) -> tuple[socket.socket, int, bytes]:
    """Send one request to the zygote listening at `path` (a command, `command_request`, with the
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


def command_request(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> dict[str, Any]:
    """The request that forks `argv` in `cwd` with environment `env`."""
    return {"argv": list(argv), "env": dict(env), "cwd": cwd}


def recv_exact(conn: socket.socket, n: int, initial: bytes = b"") -> bytes:
    data = initial
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def receive_request(
    listener: socket.socket,
) -> tuple[socket.socket, dict[str, Any], list[int]] | None:
    """Accept one request: its connection, the command, and the child's stdout/stderr fds;
    None (connection closed) for a malformed one."""
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        msg, fds, _flags, _addr = socket.recv_fds(conn, HEADER.size, 2)
        header = recv_exact(conn, HEADER.size, msg)
        (length,) = HEADER.unpack(header)
        request = json.loads(recv_exact(conn, length))
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


def send_pid(conn: socket.socket, pid: int) -> None:
    """A request's reply: the pid it concerns (a client that went away is no error here)."""
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        pass


def live_start_time(pid: int) -> float | None:
    """When process `pid` started, if it is alive and not a zombie (a process that is not
    our child may wait to be reaped); None otherwise. With the pid, the start time tells a
    process from a later one that reused its pid. In clock ticks since boot where procfs
    has them (a start time since the epoch moves when the clock is slewed: proc_start.py)."""
    from .proc_start import procfs, start_ticks

    if procfs():
        ticks = start_ticks(pid)
        return None if ticks is None else float(ticks)
    import psutil

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None
