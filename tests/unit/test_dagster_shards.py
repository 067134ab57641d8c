"""A new run's event-log database copied from a template (`_dagster_shards`, used by the
kept connections) is the database Dagster would have built: same schema, stamp, journal
and file mode, events stored and read as before. The template is built once per installed
Dagster and instance (not for a throw-away instance's only run), never copied over a
database another process created, checked before use, and its stamp is the head the
migrations' memo would have read."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import engine_event, script_reads
from dagster import DagsterInstance

from dagster_metaflow import _dagster_shards, _dagster_sqlite


@pytest.fixture(autouse=True)
def fresh_process_memos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test as a new process: no template checked or given up yet."""
    monkeypatch.setattr(_dagster_shards, "_checked", set())
    monkeypatch.setattr(_dagster_shards, "_given_up", set())


def _schema(db: Path) -> tuple[set[tuple[str, str, str]], list[tuple[Any, ...]], str, int]:
    """(tables and indexes with their SQL, the alembic stamp, the journal mode, the file's
    mode) of a database."""
    with sqlite3.connect(db) as conn:
        objects = set(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
        stamp = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return objects, stamp, journal, stat.S_IMODE(db.stat().st_mode)


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


def _with_template(instance: DagsterInstance) -> Any:
    """The instance's event-log storage after two runs: the second built the template."""
    storage: Any = instance.event_log_storage
    for run in ("run-a", "run-b"):
        storage.store_event(engine_event(run, 0))
    return storage


def _four_runs_each_readable(instance: DagsterInstance) -> Any:
    """Store an event of four new runs, each read back at once; the event-log storage."""
    storage: Any = instance.event_log_storage
    for run in ("run-a", "run-b", "run-c", "run-d"):
        storage.store_event(engine_event(run, 0))
        assert len(instance.all_logs(run)) == 1
    return storage


def _templates(storage: Any) -> list[str]:
    folder = Path(_dagster_shards.template_folder(storage._base_dir))
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_copied_run_database_is_the_one_dagster_builds(
    kept_connections: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ours").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "ours")) as instance:
        storage: Any = instance.event_log_storage
        for n in range(3):
            storage.store_event(engine_event("run-a", n))
        assert not _templates(storage)  # the instance's first run: maybe a throw-away one
        creates: list[str] = []
        real_link = os.link
        monkeypatch.setattr(os, "link", lambda a, b: creates.append(b) or real_link(a, b))
        storage.store_event(engine_event("run-b", 0))
        ours = Path(storage.path_for_shard("run-b"))
        assert creates == [str(ours)]  # run-b's database is the copy
        messages = [e.user_message for e in instance.all_logs("run-a")]
        assert messages == [f"event {n}" for n in range(3)]
        assert len(instance.all_logs("run-b")) == 1
        assert sorted(storage.get_all_run_ids()) == ["run-a", "run-b"]  # not the template
        templates = _templates(storage)
    # one template, named by the schema's key and its stamp: Dagster's head
    head = _dagster_head()
    assert templates == [f"shard-{_dagster_shards.schema_key()}-{head}.db"]
    (tmp_path / "dagster").mkdir()
    theirs = _dagster_built(tmp_path / "dagster", "run-b")
    ours_schema, theirs_schema = _schema(ours), _schema(theirs)
    assert ours_schema[0] == theirs_schema[0]
    assert ours_schema[1] == theirs_schema[1] == [(head,)]
    assert ours_schema[2] == theirs_schema[2] == "wal"
    assert ours_schema[3] == theirs_schema[3]  # the file's mode: as Dagster's
    assert not [p for p in ours.parent.rglob("*") if p.name.startswith((".copy-", ".build-"))]


def test_the_template_is_built_once_and_seeds_the_migrations_head(
    kept_connections: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
        storage.store_event(engine_event("run-a", 0))
        storage.store_event(engine_event("run-b", 0))  # builds the template
        monkeypatch.setattr(_dagster_sqlite, "_HEADS", {})  # a new process's empty memo
        monkeypatch.setattr(_dagster_shards, "_checked", set())
        before = len(reads)
        storage.store_event(engine_event("run-c", 0))
        storage.store_event(engine_event("run-d", 0))
        assert len(reads) == before  # no script read: the head came from the template
        assert list(_dagster_sqlite._HEADS.values()) == [_dagster_head()]
        assert len(instance.all_logs("run-d")) == 1
    assert len(builds) == 1


def test_an_existing_database_is_never_replaced(kept_connections: None, tmp_path: Path) -> None:
    """A database another process created first (the webserver, a worker), even between
    our look and our link, is Dagster's to check; no scratch copy is left."""
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        storage = _with_template(instance)  # the second builds the template
        [template] = _templates(storage)
        path = Path(storage.path_for_shard("run-c"))
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE mine (x)")
        folder = _dagster_shards.template_folder(storage._base_dir)
        # created after our look: the link fails and reports it, nothing replaced
        assert _dagster_shards._link_copy(os.path.join(folder, template), str(path))
        # created before our look: not even copied
        assert _dagster_shards.place_shard(str(path), lambda p: None) == _dagster_head()
        with sqlite3.connect(path) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert names == {"mine"}
        assert not [p for p in Path(folder).iterdir() if p.name.startswith(".copy-")]


def test_without_hard_links_databases_are_left_to_dagster(
    kept_connections: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without hard links: Dagster builds every database, and this process
    stops trying after the first failure."""
    tries: list[str] = []

    def no_links(src: str, dst: str) -> None:
        tries.append(dst)
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        storage = _four_runs_each_readable(instance)
        assert len(tries) == 1
        leftovers = [p for p in Path(storage._base_dir).rglob("*") if p.name.endswith(".tmp")]
        assert not leftovers


def test_an_unsound_template_is_removed_and_built_again(
    kept_connections: None, tmp_path: Path
) -> None:
    """A template that is not what its name says (damaged, truncated) is never copied."""
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        storage = _with_template(instance)
        [name] = _templates(storage)
        template = Path(_dagster_shards.template_folder(storage._base_dir)) / name
        template.write_bytes(b"not a database")
        _dagster_shards._checked.clear()  # as a new process
        storage.store_event(engine_event("run-c", 0))
        assert len(instance.all_logs("run-c")) == 1
        assert _schema(Path(storage.path_for_shard("run-c")))[1] == [(_dagster_head(),)]
        assert _dagster_shards.stamp_of(str(template)) == _dagster_head()  # rebuilt


def test_a_template_of_another_head_than_the_process_knows_is_not_used(
    kept_connections: None, tmp_path: Path
) -> None:
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        storage = _with_template(instance)
        _dagster_shards._checked.clear()  # as a new process
        path = storage.path_for_shard("run-c")
        assert _dagster_shards.place_shard(path, lambda p: None, head="another") is None
        assert not os.path.exists(path)


def test_another_installed_dagster_builds_its_own_template(
    kept_connections: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        storage = _with_template(instance)
        monkeypatch.setattr(_dagster_shards, "_key", ["another"])
        storage.store_event(engine_event("run-c", 0))
        assert len(instance.all_logs("run-c")) == 1
        names = _templates(storage)
    assert len(names) == 2 and f"shard-another-{_dagster_head()}.db" in names


def test_the_schema_key_follows_the_schema_s_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any of the files the key is made of changed (an upgrade, an edited install): another
    key, another template."""
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


def test_a_build_that_yields_no_usable_template_is_not_tried_again(
    kept_connections: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster's build leaving no stamped database (another layout, a journal left over):
    the databases are Dagster's for the rest of the process, not a scratch build per run."""
    builds: list[str] = []

    def unusable(folder: str, build: Any) -> None:
        builds.append(folder)
        return None

    monkeypatch.setattr(_dagster_shards, "_build_template", unusable)
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        _four_runs_each_readable(instance)
    assert len(builds) == 1
