"""A new run's SQLite event-log database, copied from a template instead of built.

Dagster's SQLite event log keeps one database per run, `<run id>.db`, created at the run's
first event (`SqliteEventLogStorage._initdb`): ~20 tables and indexes built through
SQLAlchemy, the WAL journal set, the schema stamped through alembic, which parses Dagster's
~90 migration scripts to find their head. That is ~40 ms alone and 100-130 ms in `dagster
job execute`, where it shares the interpreter with Metaflow's import, on the way to the
run's first step. For one installed Dagster the result is the same empty database every
time, so Dagster builds it once, into a template, and each new run's database is a copy
of it (~1 ms).

- The template sits in the event log's own directory, `.dagster-metaflow/shard-<key>-<head>.db`,
  keyed by what decides its content (`schema_key`, read when our rebinds are installed,
  beside the import of the code that builds it): Dagster's, SQLAlchemy's, alembic's and
  SQLite's versions and the files of Dagster's event-log schema and migrations (names,
  sizes, times). Dagster upgraded: another key, another template. Dagster's listing of
  runs (`*.db` in that directory) never sees it. It is built at an instance's second new
  run, so a throw-away instance (`dagster job execute` without DAGSTER_HOME) never pays for
  one.
- A copy is placed only where no database exists yet, by a hard link (never over a file
  another process created meanwhile), with the template's mode, after an fsync: as durable
  as Dagster's own. Dagster's `_initdb` still runs on it and checks its stamp as on any
  database.
- The template's stamp is the head of Dagster's migrations for that key: it seeds the head
  memo (`_dagster_sqlite.remember_alembic_heads`), so the process need not parse the
  scripts either. A template is checked once per process (readable, stamped as named, the
  memo's head if there is one) and removed if not.

Anything unexpected (no hard links on this file system, a template that cannot be built)
leaves the databases to Dagster for the rest of the process, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

TEMPLATE_DIR = ".dagster-metaflow"
# Dagster's event-log schema: the files whose content a template depends on, beside the
# migration scripts (relative to `dagster/_core/storage`)
_SCHEMA_FILES = ("event_log/schema.py", "event_log/sqlite/sqlite_event_log.py", "sql.py")
_REVISION = re.compile(r"[0-9A-Za-z_]{1,64}")  # an alembic revision id, as a file name part
_STALE_SCRATCH_SECONDS = 600.0  # a scratch file this old was left by a process that died
_key: list[str] = []  # computed once per process
_checked: set[str] = set()  # templates found sound by this process
_given_up: set[str] = set()  # template folders where copying failed in this process


def schema_key() -> str:
    """What a template's content depends on, as a short digest (once per process: call it
    where the storage code is imported, so that it describes the code that runs)."""
    if not _key:
        import alembic
        import dagster
        import sqlalchemy

        storage = os.path.join(os.path.dirname(dagster.__file__), "_core", "storage")
        versions = os.path.join(storage, "alembic", "versions")
        parts = [
            dagster.__version__,
            sqlalchemy.__version__,
            alembic.__version__,
            sqlite3.sqlite_version,
        ]
        scripts = sorted(name for name in os.listdir(versions) if name.endswith(".py"))
        paths = [os.path.join(versions, name) for name in scripts]
        paths += [os.path.join(storage, name) for name in _SCHEMA_FILES]
        for path in paths:
            st = os.stat(path)
            parts.append(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}")
        _key.append(hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16])
    return _key[0]


def template_folder(base_dir: str) -> str:
    """Where the templates of the run databases of the event log in `base_dir` sit."""
    return os.path.join(base_dir, TEMPLATE_DIR)


def place_shard(path: str, build: Callable[[str], None], head: str | None = None) -> str | None:
    """Create the run database `path` as a copy of the template if it does not exist yet,
    building the template first if there is none and the instance has run before
    (`build(db_path)`: Dagster's own creation of an empty database). `head`: the head this
    process knows already, if any. Returns the template's stamp (the migrations' head), or
    None when there is no sound template; the database is then left to Dagster."""
    folder = template_folder(os.path.dirname(path))
    if folder in _given_up:
        return None
    try:
        found = _sound_template(folder, head)
        if os.path.exists(path):
            return found[1] if found else None
        if found is None and _has_run_databases(os.path.dirname(path)):
            found = _build_template(folder, build)
            if found is None:  # Dagster built no usable database: not again in this process
                _given_up.add(folder)
        if found is not None and not _link_copy(found[0], path):
            _given_up.add(folder)
        return found[1] if found else None
    except Exception:
        _given_up.add(folder)
        return None


def stamp_of(db_path: str) -> str | None:
    """The alembic revision a database that nothing writes to is stamped with."""
    uri = "file:" + urllib.parse.quote(db_path) + "?immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return None
    return rows[0][0] if len(rows) == 1 and rows[0][0] else None


def _find_template(folder: str) -> tuple[str, str] | None:
    """(path, head) of the template for this installed Dagster, if it was built: its name
    carries the stamp it was built with (`shard-<key>-<head>.db`)."""
    prefix = f"shard-{schema_key()}-"
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    for name in names:
        head = name[len(prefix) : -len(".db")]
        if name.startswith(prefix) and name.endswith(".db") and _REVISION.fullmatch(head):
            return os.path.join(folder, name), head
    return None


def _sound_template(folder: str, head: str | None) -> tuple[str, str] | None:
    """The template, checked once per process: stamped as its name says, and with the head
    this process knows if it knows one. An unsound one is removed (rebuilt next time)."""
    found = _find_template(folder)
    if found is None or found[0] in _checked:
        return found
    path, named = found
    if stamp_of(path) == named and (head is None or head == named):
        _checked.add(path)
        return found
    with contextlib.suppress(OSError):
        os.unlink(path)
    return None


def _has_run_databases(base_dir: str) -> bool:
    """The instance has a run database already: it is not a throw-away one."""
    with os.scandir(base_dir) as entries:
        return any(e.name.endswith(".db") and e.name != "index.db" for e in entries)


def _build_template(folder: str, build: Callable[[str], None]) -> tuple[str, str] | None:
    """Let Dagster create an empty run database in a scratch folder, read its stamp, and
    move it in as the template. Two processes doing this at once each move in a complete
    one, under the same name."""
    os.makedirs(folder, exist_ok=True)
    _sweep(folder)
    scratch = tempfile.mkdtemp(prefix=".build-", dir=folder)
    try:
        db_path = os.path.join(scratch, "shard.db")
        build(db_path)  # closes its connections: the WAL is checkpointed into the file
        head = None if os.path.exists(db_path + "-wal") else stamp_of(db_path)
        if head is None or not _REVISION.fullmatch(head):
            return None
        with open(db_path, "rb") as f:
            os.fsync(f.fileno())
        template = os.path.join(folder, f"shard-{schema_key()}-{head}.db")
        os.replace(db_path, template)
        _checked.add(template)
        return template, head
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _sweep(folder: str) -> None:
    """Remove scratch files and folders that processes which died left behind."""
    cutoff = time.time() - _STALE_SCRATCH_SECONDS
    with os.scandir(folder) as entries:
        stale = [
            e.path
            for e in entries
            if e.name.startswith((".build-", ".copy-")) and e.stat().st_mtime < cutoff
        ]
    for path in stale:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _link_copy(template: str, path: str) -> bool:
    """Copy the template to `path` if nothing is there: written beside the template, with
    its mode, synced, then hard-linked in (which fails rather than replaces when another
    process created `path`). False when this file system cannot do it."""
    folder = os.path.dirname(template)
    fd, scratch = tempfile.mkstemp(prefix=".copy-", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, os.stat(template).st_mode & 0o7777)
        with os.fdopen(fd, "wb") as out, open(template, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.link(scratch, path)
    except FileExistsError:  # created meanwhile by another process: Dagster's to check
        pass
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
    return True


def build_with(
    storage: Any, create_engine: Callable[..., Any], connect_args: dict[str, Any]
) -> Callable[[str], None]:
    """`build` for `place_shard`: Dagster's `_initdb` of `storage` on a new database file."""

    def build(db_path: str) -> None:
        from sqlalchemy.pool import NullPool

        url = "sqlite:///" + os.path.abspath(db_path)
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        try:
            storage._initdb(engine)
        finally:
            engine.dispose()

    return build
