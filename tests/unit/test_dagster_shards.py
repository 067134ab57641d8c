"""A new run's event-log database copied from a template (`_dagster_shards`, used by the
kept connections) is the database Dagster would have built: same schema, stamp and
journal, events stored and read as before; the template is built once per installed
Dagster, never over a database another process created, and its stamp is the head the
migrations' memo would have read."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import script_reads
from dagster import DagsterEventType, DagsterInstance
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

from dagster_metaflow import _dagster_shards, _dagster_sqlite


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kept connections (which copy new run databases) for one test."""
    monkeypatch.setattr(SqliteEventLogStorage, "_connect", SqliteEventLogStorage._connect)
    monkeypatch.setattr(SqliteRunStorage, "connect", SqliteRunStorage.connect)
    _dagster_sqlite.keep_sqlite_connections()
    yield
    _dagster_sqlite.release_sqlite_connections()


def _event(run_id: str, n: int) -> EventLogEntry:
    return EventLogEntry(
        error_info=None,
        level="INFO",
        user_message=f"event {n}",
        run_id=run_id,
        timestamp=time.time(),
        dagster_event=DagsterEvent(
            DagsterEventType.ENGINE_EVENT.value,
            "test_job",
            message=f"event {n}",
            event_specific_data=EngineEventData(),
        ),
    )


def _schema(db: Path) -> tuple[set[tuple[str, str, str]], list[tuple[Any, ...]], str]:
    """(tables and indexes with their SQL, the alembic stamp, the journal mode) of a database."""
    with sqlite3.connect(db) as conn:
        objects = set(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
        stamp = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return objects, stamp, journal


def _dagster_head() -> str:
    from alembic.script import ScriptDirectory
    from dagster._core.storage import sql
    from dagster._core.storage.event_log.sqlite import sqlite_event_log

    config = sql.get_alembic_config(sqlite_event_log.__file__)
    return str(ScriptDirectory.from_config(config).as_revision_number("head"))


def _dagster_built(home: Path, run_id: str) -> Path:
    """The run database Dagster's own code builds (a fresh process, no rebinds of ours)."""
    code = (
        "import sys, time\nfrom dagster import DagsterInstance\n"
        "from dagster._core.events.log import EventLogEntry\n"
        "with DagsterInstance.local_temp(sys.argv[1]) as i:\n"
        "    i.event_log_storage.store_event(EventLogEntry(error_info=None, level='INFO',"
        " user_message='m', run_id=sys.argv[2], timestamp=time.time()))\n"
        "    print(i.event_log_storage.path_for_shard(sys.argv[2]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(home), run_id], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def test_a_copied_run_database_is_the_one_dagster_builds(kept: None, tmp_path: Path) -> None:
    (tmp_path / "ours").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "ours")) as instance:
        storage: Any = instance.event_log_storage
        for n in range(3):
            storage.store_event(_event("run-a", n))
        storage.store_event(_event("run-b", 0))
        messages = [e.user_message for e in instance.all_logs("run-a")]
        assert messages == [f"event {n}" for n in range(3)]
        ours = Path(storage.path_for_shard("run-b"))
        folder = Path(_dagster_shards.template_folder(storage._base_dir))
        templates = sorted(p.name for p in folder.iterdir())
        assert sorted(storage.get_all_run_ids()) == ["run-a", "run-b"]  # not the template
    # one template, named by the schema's key and its stamp: Dagster's head
    head = _dagster_head()
    assert templates == [f"shard-{_dagster_shards.schema_key()}-{head}.db"]
    (tmp_path / "dagster").mkdir()
    theirs = _dagster_built(tmp_path / "dagster", "run-b")
    ours_schema, theirs_schema = _schema(ours), _schema(theirs)
    assert ours_schema[0] == theirs_schema[0]
    assert ours_schema[1] == theirs_schema[1] == [(head,)]
    assert ours_schema[2] == theirs_schema[2] == "wal"


def test_the_template_is_built_once_and_seeds_the_migrations_head(
    kept: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process whose head memo is empty (`dagster job execute` creating its run) takes
    the head from the template's stamp: no migration script is read for the run's database."""
    builds: list[str] = []
    real_build = _dagster_shards._build_template

    def counting_build(folder: str, build: Any) -> Any:
        builds.append(folder)
        return real_build(folder, build)

    monkeypatch.setattr(_dagster_shards, "_build_template", counting_build)
    _, reads = script_reads(monkeypatch)
    _dagster_sqlite.remember_alembic_heads()
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        storage: Any = instance.event_log_storage
        storage.store_event(_event("run-a", 0))  # builds the template
        monkeypatch.setattr(_dagster_sqlite, "_HEADS", {})  # a new process's empty memo
        before = len(reads)
        storage.store_event(_event("run-b", 0))
        storage.store_event(_event("run-c", 0))
        assert len(reads) == before  # no script read: the head came from the template
        assert list(_dagster_sqlite._HEADS.values()) == [_dagster_head()]
        assert len(instance.all_logs("run-c")) == 1
    assert len(builds) == 1


def test_an_existing_database_is_never_replaced(kept: None, tmp_path: Path) -> None:
    """A database another process created first (the webserver, a worker) is Dagster's to
    check; the copy is only ever linked where nothing is."""
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        storage: Any = instance.event_log_storage
        storage.store_event(_event("run-a", 0))  # builds the template
        path = Path(storage.path_for_shard("run-b"))
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE mine (x)")
        head = _dagster_shards.place_shard(str(path), lambda p: None)
        assert head == _dagster_head()
        with sqlite3.connect(path) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "mine" in names and "event_logs" not in names
        leftovers = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        assert not leftovers


def test_without_hard_links_the_database_is_left_to_dagster(
    kept: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str, dst: str) -> None:
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        storage: Any = instance.event_log_storage
        for run in ("run-a", "run-b"):
            storage.store_event(_event(run, 0))
            assert len(instance.all_logs(run)) == 1
        assert not [p for p in Path(storage._base_dir).iterdir() if p.name.endswith(".tmp")]


def test_another_installed_dagster_builds_its_own_template(
    kept: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        storage: Any = instance.event_log_storage
        storage.store_event(_event("run-a", 0))
        monkeypatch.setattr(_dagster_shards, "_key", ["another"])
        storage.store_event(_event("run-b", 0))
        assert len(instance.all_logs("run-b")) == 1
        folder = Path(_dagster_shards.template_folder(storage._base_dir))
        names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and names[0] == f"shard-another-{_dagster_head()}.db"


def test_the_schema_key_follows_the_schema_s_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is Dagster's and SQLAlchemy's versions and the schema's files: any of them
    changed (an upgrade, an edited install) is another template."""
    schema_file = tmp_path / "schema.py"
    schema_file.write_text("x = 1\n")
    files = (*_dagster_shards._SCHEMA_FILES, str(schema_file))
    monkeypatch.setattr(_dagster_shards, "_SCHEMA_FILES", files)
    monkeypatch.setattr(_dagster_shards, "_key", [])
    key = _dagster_shards.schema_key()
    monkeypatch.setattr(_dagster_shards, "_key", [])
    assert _dagster_shards.schema_key() == key  # the same files, the same key
    schema_file.write_text("x = 12\n")
    monkeypatch.setattr(_dagster_shards, "_key", [])
    assert _dagster_shards.schema_key() != key
