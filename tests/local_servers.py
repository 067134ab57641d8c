"""Throw-away servers on 127.0.0.1 and free ports, without pytest: the e2e suite's services
(`services.py` turns `Unavailable` into a skip) and the benchmarks (`benchmarks/wide.py
--postgres`) start them the same way."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PG_UNAVAILABLE = (
    "PostgreSQL server binaries (initdb, postgres) not found on PATH or in "
    "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"
)


class Unavailable(Exception):
    """A server this machine cannot start; the message says what to install."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, ready: Any, timeout: float, proc: subprocess.Popen[Any]) -> None:
    """Until `ready()`; one clear error if the server exits or never gets there (an error,
    not an assert: the benchmarks run this outside pytest)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what} did not start in {timeout:g} s")
        time.sleep(0.1)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _pg_binary(name: str) -> str | None:
    """PATH first, then Debian's versioned directory (not on PATH), newest version."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")

    def version(path: str) -> int:
        v = Path(path).parts[-3]
        return int(v) if v.isdigit() else 0

    return max(candidates, key=version) if candidates else None


def _server_user() -> dict[str, Any]:
    """initdb and postgres refuse to run as root: as root, run them as `postgres` (Debian's
    package creates it) or `nobody`; otherwise as ourselves."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    raise Unavailable("running as root and neither a `postgres` nor a `nobody` user exists for initdb")


@contextmanager
def postgres_server() -> Iterator[dict[str, str]]:
    """A throw-away PostgreSQL on a free port with a `dagster` database (no fsync: a test
    server); yields the DAGSTER_PG_* variables the README's dagster.yaml reads."""
    initdb, server = _pg_binary("initdb"), _pg_binary("postgres")
    if initdb is None or server is None:
        raise Unavailable(PG_UNAVAILABLE)
    import psycopg2

    who = _server_user()
    root = tempfile.mkdtemp(prefix="dm-pg-")
    if who:
        os.chown(root, who["user"], who["group"])
    data, port = os.path.join(root, "data"), free_port()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    init = subprocess.run(
        [initdb, "-D", data, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"],
        cwd=root, env=env, capture_output=True, text=True, **who,
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    log = open(os.path.join(root, "postgres.log"), "wb")  # noqa: SIM115 - kept open for the server
    proc = subprocess.Popen(
        [server, "-D", data, "-p", str(port), "-h", "127.0.0.1", "-k", root,
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, **who,
    )

    def connect() -> Any:
        try:
            return psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        except psycopg2.OperationalError:
            return None

    def ready() -> bool:
        conn = connect()
        if conn is not None:
            conn.close()
        return conn is not None

    try:
        wait_for("postgres", ready, 30, proc)
        conn = connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE dagster")
        conn.close()
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_DB": "dagster",
        }
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown: ends open client connections
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def pg_query(pg: dict[str, str], sql: str) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(
        host=pg["DAGSTER_PG_HOST"], port=int(pg["DAGSTER_PG_PORT"]), user=pg["DAGSTER_PG_USER"],
        dbname=pg["DAGSTER_PG_DB"],
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()
