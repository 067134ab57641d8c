"""Kept SQLite connections in a run worker (`_dagster_sqlite.keep_sqlite_connections`) keep
Dagster's answers: every event stored and readable by another process at once, the
webserver's file watch still told of each one, threads and forks safe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from conftest import engine_event
from dagster import DagsterInstance
from dagster._core.events.log import EventLogEntry

from dagster_metaflow import _dagster_sqlite


def _instance(home: Path) -> DagsterInstance:
    return DagsterInstance.local_temp(str(home))


def _count_elsewhere(home: Path, run_id: str) -> int:
    """The run's events as a fresh process (Dagster's own code) reads them."""
    code = (
        "import sys\nfrom dagster import DagsterInstance\n"
        "with DagsterInstance.local_temp(sys.argv[1]) as i:\n"
        "    print(len(i.all_logs(sys.argv[2])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(home), run_id], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def test_events_are_stored_once_each_and_read_at_once_by_another_process(
    kept_connections: None, tmp_path: Path
) -> None:
    with _instance(tmp_path) as instance:
        storage: Any = instance.event_log_storage
        assert storage._connect.keeps_connections
        for n in range(20):
            storage.store_event(engine_event("run-a", n))
        assert _count_elsewhere(tmp_path, "run-a") == 20
        # one engine for the shard, its one connection kept
        engines = _dagster_sqlite._ENGINES._by_url
        shard = [e for url, (e, _) in engines.items() if url.endswith("run-a.db")]
        assert len(shard) == 1 and shard[0].pool.checkedin() == 1
        assert [r.user_message for r in instance.all_logs("run-a")] == [
            f"event {n}" for n in range(20)
        ]


def test_the_webserver_s_watch_of_the_run_s_file_sees_every_event(
    kept_connections: None, tmp_path: Path
) -> None:
    """The webserver follows a run by watching `<run id>.db` change: events must reach that
    file (not only the write-ahead log) as they are stored."""
    with _instance(tmp_path) as writer, _instance(tmp_path) as reader:
        writer.event_log_storage.store_event(engine_event("run-w", 0))  # the shard exists
        seen: list[str] = []
        done = threading.Event()

        def callback(entry: EventLogEntry, _cursor: str) -> None:
            seen.append(entry.user_message)
            if len(seen) >= 6:
                done.set()

        reader.event_log_storage.watch("run-w", None, callback)
        try:
            time.sleep(0.3)  # the watch is set up
            for n in range(1, 6):
                writer.event_log_storage.store_event(engine_event("run-w", n))
                time.sleep(0.05)
            assert done.wait(10), f"the watch saw only {seen}"
        finally:
            reader.event_log_storage.end_watch("run-w", callback)
    assert seen[-5:] == [f"event {n}" for n in range(1, 6)]


def test_threads_storing_at_once_lose_nothing(kept_connections: None, tmp_path: Path) -> None:
    with _instance(tmp_path) as instance:
        storage = instance.event_log_storage

        def store(t: int) -> None:
            for n in range(25):
                storage.store_event(engine_event("run-t", t * 100 + n))

        threads = [threading.Thread(target=store, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(instance.all_logs("run-t")) == 200
        # the run storage's kept connection from several threads
        read: list[object] = []
        runs = [
            threading.Thread(target=lambda: read.append(instance.get_runs(limit=5)))
            for _ in range(4)
        ]
        for th in runs:
            th.start()
        for th in runs:
            th.join()
        assert read == [[], [], [], []]


def test_a_forked_child_opens_its_own_connections_and_the_parent_keeps_working(
    kept_connections: None, tmp_path: Path
) -> None:
    """SQLite forbids using, or even holding, a parent's connection across fork: the parent
    closes its kept connections before forking, the child opens its own."""
    with _instance(tmp_path) as instance:
        storage = instance.event_log_storage
        storage.store_event(engine_event("run-f", 0))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                assert not _dagster_sqlite._ENGINES._by_url  # closed before the fork
                storage.store_event(engine_event("run-f", 1))
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        storage.store_event(engine_event("run-f", 2))
        assert [r.user_message for r in instance.all_logs("run-f")] == [
            "event 0",
            "event 1",
            "event 2",
        ]


def test_released_connections_close_the_databases(kept_connections: None, tmp_path: Path) -> None:
    """Closing the last connection checkpoints and removes the write-ahead log, as Dagster's
    own per-event connections did."""
    with _instance(tmp_path) as instance:
        instance.event_log_storage.store_event(engine_event("run-r", 0))
        db = tmp_path / "history" / "runs" / "run-r.db"
        assert Path(f"{db}-wal").exists()  # the kept connection holds it
        _dagster_sqlite.release_sqlite_connections()
        assert not Path(f"{db}-wal").exists()
        instance.event_log_storage.store_event(engine_event("run-r", 1))  # reopens
        assert len(instance.all_logs("run-r")) == 2


def test_an_instance_made_again_at_the_same_path_is_opened_again(
    kept_connections: None, tmp_path: Path
) -> None:
    """A kept connection is to a file: an instance wiped and created again at the same path
    (tests, a user starting over) must not be written through a connection to the old one."""
    import shutil

    home = tmp_path / "home"
    home.mkdir()
    with _instance(home) as instance:
        instance.event_log_storage.store_event(engine_event("run-same", 0))
    shutil.rmtree(home)
    home.mkdir()
    with _instance(home) as instance:
        instance.event_log_storage.store_event(engine_event("run-same", 1))
        assert [r.user_message for r in instance.all_logs("run-same")] == ["event 1"]
    assert _count_elsewhere(home, "run-same") == 1


def test_at_most_a_few_databases_are_kept_open(kept_connections: None, tmp_path: Path) -> None:
    """A process that runs many runs (a test session, a notebook) does not keep every run's
    database open."""
    with _instance(tmp_path) as instance:
        for n in range(_dagster_sqlite._Engines.KEEP + 10):
            instance.event_log_storage.store_event(engine_event(f"run-{n}", n))
        assert len(_dagster_sqlite._ENGINES._by_url) <= _dagster_sqlite._Engines.KEEP
        assert len(instance.all_logs("run-0")) == 1  # an evicted one opens again
