"""Real services the e2e tests start themselves on 127.0.0.1 and free ports: Redis, Celery
workers, a local S3-compatible server (moto), PostgreSQL. Each is a context manager that skips
the test with the Debian/PyPI package to install when its binary is missing, so one test can
combine several (the production stack) and each suite's fixture stays one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, Workspace, stop_group
from local_servers import Unavailable, accepts, free_port, wait_for
from local_servers import pg_query as pg_query  # the e2e tests import it from here
from local_servers import postgres_server as _postgres_server

README = Path(__file__).resolve().parents[1] / "README.md"
BUCKET = "dm-test"
S3_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}


def wait_for_webserver(base: str, server: subprocess.Popen[Any], log: Path, timeout: float = 60) -> None:
    """Until dagster-webserver at `base` answers; its log if it died or never came up."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{base}/server_info", timeout=2).close()
            return
        except OSError:
            assert server.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "dagster-webserver did not start"
            time.sleep(0.5)


# -- Redis and Celery -------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[str]:
    """`redis://127.0.0.1:<port>` of a throw-away redis-server (no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for("redis-server", lambda: accepts(port), 20, proc)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def celery_config(redis_url: str, ws: Workspace) -> dict[str, str]:
    """Broker and backend for one test: its own Redis database pair, so no stray tasks."""
    db = abs(hash(ws.dir)) % 14 + 1
    return {"broker": f"{redis_url}/{db}", "backend": f"{redis_url}/{db + 1}"}


class CeleryWorkers:
    """Two dagster-celery workers (one task at a time each) serving one workspace's instance."""

    def __init__(self, ws: Workspace, config: dict[str, str]) -> None:
        cfg = ws.dir / "celery.yaml"
        cfg.write_text(json.dumps({"execution": {"config": config}}))
        env = {**os.environ, "DAGSTER_HOME": str(ws.dagster_home)}
        self.names = ["w1", "w2"]  # dagster-celery makes them w1@<host>, w2@<host>
        self.ws = ws
        self.procs = [
            subprocess.Popen(
                [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                 "-y", str(cfg), "-n", name, "--", "--concurrency", "1"],
                cwd=ws.dir, env=env, stdout=open(ws.dir / f"{name}.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT, start_new_session=True,
            )
            for name in self.names
        ]
        try:
            self._wait_ready(config["broker"])
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, broker: str) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            out = subprocess.run(
                [str(BIN / "celery"), "-A", "dagster_celery.app", "-b", broker, "inspect", "ping"],
                capture_output=True, text=True, cwd=self.ws.dir,
            ).stdout
            if all(f"{n}@" in out for n in self.names):
                return
            time.sleep(1)
        raise AssertionError("celery workers did not start:\n" + self.logs())

    def logs(self) -> str:
        return "\n".join((self.ws.dir / f"{n}.log").read_text()[-3000:] for n in self.names)

    def stop(self) -> None:
        stop_group(*self.procs, grace=20)


def celery_hosts(instance: Any, run_id: str) -> dict[str, str]:
    """step key -> the Celery worker (name@host) that ran it, from the run's engine events."""
    hosts: dict[str, str] = {}
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        if ev is not None and ev.is_engine_event and ev.step_key and "celery worker" in (rec.message or ""):
            hosts[ev.step_key] = ev.engine_event_data.metadata["Celery worker"].value
    return hosts


# -- S3 (moto server) -------------------------------------------------------------------------


@contextmanager
def moto_s3() -> Iterator[dict[str, str]]:
    """A moto S3 server with bucket BUCKET; yields the environment that points Metaflow (and
    boto3) at it, with `_ENDPOINT` for the tests' own clients."""
    pytest.importorskip("moto")
    import boto3

    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"

    def bucket_made() -> bool:
        try:
            boto3.client("s3", endpoint_url=endpoint, **S3_CREDENTIALS).create_bucket(Bucket=BUCKET)
            return True
        except Exception:
            return False

    try:
        wait_for("moto_server", bucket_made, 30, proc)
        yield {
            "AWS_ACCESS_KEY_ID": S3_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": S3_CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": S3_CREDENTIALS["region_name"],
            "METAFLOW_S3_ENDPOINT_URL": endpoint,
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{BUCKET}/metaflow",
            "_ENDPOINT": endpoint,
        }
    finally:
        proc.terminate()
        proc.wait(10)


def metaflow_env(s3_env: dict[str, str]) -> dict[str, str]:
    """The variables for Metaflow commands (without the tests' own `_` keys)."""
    return {k: v for k, v in s3_env.items() if not k.startswith("_")}


def s3_keys(s3_env: dict[str, str], prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env["_ENDPOINT"], **S3_CREDENTIALS)
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


# -- PostgreSQL -------------------------------------------------------------------------------


@contextmanager
def postgres_server() -> Iterator[dict[str, str]]:
    """`local_servers.postgres_server`, skipping the test where PostgreSQL cannot start."""
    with ExitStack() as stack:
        try:
            env = stack.enter_context(_postgres_server())
        except Unavailable as exc:
            pytest.skip(str(exc))
        yield env


def production_yaml() -> str:
    """The README's production dagster.yaml, so the documented file is the tested one."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if "QueuedRunCoordinator" in b and "postgres_db" in b]
    assert len(found) == 1, "README has no (or several) production dagster.yaml blocks"
    return found[0]


@contextmanager
def dagster_daemon(ws: Workspace, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` on the workspace file of every deployment in ws's instance
    (`env`: more environment for the daemon, and so for the run workers it starts)."""
    home = ws.dagster_home
    proc = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(home / "dagster_metaflow_workspace.yaml")],
        cwd=ws.dir, env={**os.environ, "DAGSTER_HOME": str(home), **env},
        stdout=open(ws.dir / "daemon.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_group(proc, grace=60)


class WebhookServer:
    """A local HTTP server standing in for Slack, PagerDuty and incident.io: it answers every
    POST with 202 (or `status`) and keeps (path, headers, JSON body) of each, in order."""

    def __init__(self, status: int = 202) -> None:
        import http.server
        import threading

        self.received: list[tuple[str, dict[str, str], Any]] = []
        self.status = status
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = body.decode(errors="replace")
                outer.received.append((self.path, dict(self.headers.items()), parsed))
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(b'{"status": "success"}')

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def env(self) -> dict[str, str]:
        """Where the run worker and the daemon send PagerDuty's and incident.io's messages."""
        return {
            "DAGSTER_METAFLOW_PAGERDUTY_URL": self.url + "/pagerduty",
            "DAGSTER_METAFLOW_INCIDENT_IO_URL": self.url + "/incident",
        }

    def paths(self) -> list[str]:
        return [path for path, _h, _b in self.received]
