"""Two rebinds of Dagster's SQLite storages (the default instance), for our own processes.

Both are private Dagster internals, kept here beside `_dagster_private` and degrading to
Dagster's own code when its storages are laid out otherwise:

- `remember_alembic_heads` (our commands, run workers): the head of Dagster's schema
  migrations is read once per process; the database's revision still at every open.
  `warm_alembic_heads` (the worker zygote) reads it before any storage opens, for every
  run worker forked from there.
- `keep_sqlite_connections` (our commands, run workers): one SQLite connection per
  event-log shard and for the run storage, kept for the process's life instead of a new
  SQLAlchemy engine, connection and statement compilation for every event; and a new
  run's event-log database copied from a template (`_dagster_shards`), whose stamp also
  gives the head memo its head.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ._dagster_shards import build_with, place_shard, schema_key

# the storages that check their schema at every open, each with its own binding of
# `dagster._core.storage.sql.check_alembic_revision`
_ALEMBIC_CHECKERS = (
    "dagster._core.storage.sql",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
)
_EVENT_LOG = "dagster._core.storage.event_log.sqlite.sqlite_event_log"
_RUN_STORAGE = "dagster._core.storage.runs.sqlite.sqlite_run_storage"
# the head of the migration scripts, by their location (`remember_alembic_heads`)
_HEADS: dict[Any, Any] = {}
_OWN_ALEMBIC_LOCK = threading.Lock()


def _alembic_lock(sql: Any) -> Any:
    """The lock Dagster takes around its alembic reads, or ours for a Dagster without one."""
    return getattr(sql, "_alembic_lock", None) or _OWN_ALEMBIC_LOCK


def remember_alembic_heads() -> None:
    """Read the head of Dagster's schema migrations once per process.

    Every time a SQLite storage opens (four times per CLI command, five in a run worker,
    one of them per run for its own event database) Dagster compares the database's
    revision with the head of its ~90 migration scripts, and alembic parses all of them
    again to find that head: ~30 ms each, ~0.15 s of a 2.3 s `trigger --wait`. The head is a
    constant of the installed Dagster; the database's revision is still read at every
    open. A no-op for a Dagster whose storages are laid out otherwise."""
    try:
        from alembic.runtime.migration import MigrationContext

        sql = importlib.import_module(_ALEMBIC_CHECKERS[0])
        original = sql.check_alembic_revision
    except (ImportError, AttributeError):
        return
    if getattr(original, "remembers_heads", False):
        return
    lock = _alembic_lock(sql)

    def check_alembic_revision(alembic_config: Any, conn: Any) -> tuple[Any, Any]:
        location = alembic_config.get_main_option("script_location")
        head = _HEADS.get(location)
        if head is None:
            db_revision, head = original(alembic_config, conn)
            _HEADS[location] = head
            return db_revision, head
        with lock:
            db_revision = MigrationContext.configure(conn).get_current_revision()
        return db_revision, head

    check_alembic_revision.remembers_heads = True  # type: ignore[attr-defined]
    for name in _ALEMBIC_CHECKERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "check_alembic_revision", None) is original:
            module.check_alembic_revision = check_alembic_revision  # type: ignore[attr-defined]


def warm_alembic_heads() -> None:
    """`remember_alembic_heads`, with the head read now: for a process that forks run
    workers (the worker zygote), each of which would otherwise read the ~90 scripts
    again at its first storage open (~30 ms). The SQLite storages share one location
    (the run storage's is read). Nothing is read when the memo is not in place."""
    remember_alembic_heads()
    try:
        from alembic.script import ScriptDirectory

        memo = _memo_location()
        if memo is None:
            return
        sql, config, location = memo
        with _alembic_lock(sql):  # as Dagster reads it
            if _HEADS.get(location) is None:
                _HEADS[location] = ScriptDirectory.from_config(config).as_revision_number("head")
    except Exception:  # laid out otherwise: each worker reads it at its first open
        return


def _memo_location() -> tuple[Any, Any, str] | None:
    """(Dagster's `sql` module, the alembic config, its script location: the memo's key)
    when the head memo is in place; None otherwise."""
    try:
        sql = importlib.import_module(_ALEMBIC_CHECKERS[0])
        if not getattr(sql.check_alembic_revision, "remembers_heads", False):
            return None
        config = sql.get_alembic_config(importlib.import_module(_RUN_STORAGE).__file__)
        return sql, config, config.get_main_option("script_location")
    except Exception:
        return None


class _Engines:
    """This process's kept SQLAlchemy engines, by connection string.

    SQLite forbids carrying an open connection across fork(), even one the child never
    uses (its in-memory lock table is inherited): they are closed before any fork, and a
    child forgets its parent's. At most KEEP are kept (a process that runs many runs, such
    as a test session, closes the oldest), and one whose file was replaced or removed
    since (an instance wiped or created again at the same path) is opened again."""

    KEEP = 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # url -> (engine, (st_dev, st_ino) of its file once it exists); oldest use first
        self._by_url: OrderedDict[str, tuple[Any, tuple[int, int] | None]] = OrderedDict()
        self._pid = os.getpid()

    def get(self, url: str, create: Any, connect_args: dict[str, Any]) -> Any:
        stale: list[Any] = []
        with self._lock:
            if self._pid != os.getpid():
                self._forget()
            engine, identity = self._by_url.pop(url, (None, None))
            if engine is not None and _file_identity(engine.url.database) != identity:
                stale.append(engine)  # not the file it opened
                engine = None
            if engine is None:
                engine = self._create(url, create, connect_args)
                identity = _file_identity(engine.url.database)
            self._by_url[url] = (engine, identity)
            while len(self._by_url) > self.KEEP:
                stale.append(self._by_url.popitem(last=False)[1][0])
        for old in stale:
            with contextlib.suppress(Exception):
                old.dispose()
        return engine

    @staticmethod
    def _create(url: str, create: Any, connect_args: dict[str, Any]) -> Any:
        from sqlalchemy.pool import QueuePool

        # one kept connection; a concurrent user (another thread) gets its own, closed when
        # returned, as before
        engine = create(
            url,
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=-1,
            connect_args={**connect_args, "check_same_thread": False},
        )
        with engine.connect():  # opened now (SQLite creates the file): its identity is known
            pass
        return engine

    def close_all(self) -> None:
        """Close every kept connection (before a fork; at the end of a run worker)."""
        with self._lock:
            if self._pid != os.getpid():
                self._forget()
                return
            engines = [engine for engine, _ in self._by_url.values()]
            self._by_url = OrderedDict()
        for engine in engines:
            with contextlib.suppress(Exception):
                engine.dispose()

    def _forget(self) -> None:
        """In a forked child: drop the parent's engines without touching their connections."""
        for engine, _ in self._by_url.values():
            with contextlib.suppress(Exception):
                engine.dispose(close=False)
        self._by_url = OrderedDict()
        self._pid = os.getpid()


def _file_identity(path: str | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st is not None else None


_ENGINES = _Engines()
os.register_at_fork(before=_ENGINES.close_all)
atexit.register(_ENGINES.close_all)


def keep_sqlite_connections() -> None:
    """Keep one SQLite connection per event-log shard, and one for the run storage, in this
    process (our commands, run workers), instead of Dagster's new engine and connection
    per use.

    Dagster's SQLite storages create an engine with a NullPool for every event: a new
    connection, SQLAlchemy compiling the insert again, and closing (a WAL checkpoint). That
    is 2.7 ms per event on this machine, ~5 events per step; kept, 1.3 ms. Each write still
    commits at once, and the event log is still checkpointed into `<run id>.db` after every
    use: the webserver learns of new events by watching that file change. Kept connections
    are closed before the process forks (`trigger` forks the run worker after creating the
    run) and a forked child opens its own. A no-op for a Dagster whose storages are laid
    out otherwise."""
    _keep_event_log_connections()
    _keep_run_storage_connection()


def release_sqlite_connections() -> None:
    """Close the kept connections: the last checkpoint of each database, as closing does."""
    _ENGINES.close_all()


def _not_rebound(
    module_name: str, class_name: str, method: str, uses: tuple[str, ...] = ()
) -> tuple[Any, Any] | None:
    """(module, class) of a storage method to rebind; None when Dagster lays it out
    otherwise (the method, `create_engine` or the class attributes the rebind `uses` are
    missing), or it is rebound already."""
    try:
        module = importlib.import_module(module_name)
        storage = getattr(module, class_name)
        original = getattr(storage, method)
        for name in uses:
            getattr(storage, name)
        module.create_engine  # noqa: B018
    except (ImportError, AttributeError):
        return None
    return None if getattr(original, "keeps_connections", False) else (module, storage)


def _keep_event_log_connections() -> None:
    found = _not_rebound(
        _EVENT_LOG,
        "SqliteEventLogStorage",
        "_connect",
        ("_initdb", "conn_string_for_shard", "path_for_shard"),
    )
    if found is None:
        return
    module, storage = found
    timeout = getattr(module, "SQLITE_BUSY_TIMEOUT_SECONDS", None)
    connect_args = {} if timeout is None else {"timeout": timeout}
    index_shard = getattr(module, "INDEX_SHARD_NAME", "index")
    with contextlib.suppress(Exception):
        schema_key()  # what the templates of this process's run databases are keyed by

    @contextlib.contextmanager
    def _connect(self: Any, shard: str) -> Iterator[Any]:
        with self._db_lock:  # as Dagster's: one user of the storage's databases at a time
            conn_string = self.conn_string_for_shard(shard)  # Dagster's checks of `shard`
            if shard not in self._initialized_dbs and shard != index_shard:
                _run_database_from_template(self, shard, module, connect_args)
            engine = _ENGINES.get(conn_string, module.create_engine, connect_args)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn
                # what closing the connection did: move the new events into `<run id>.db`,
                # the file the webserver watches; only a notice, never the write's outcome
                with contextlib.suppress(Exception):
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").close()

    _connect.keeps_connections = True  # type: ignore[attr-defined]
    storage._connect = _connect


def _run_database_from_template(
    storage: Any, shard: str, module: Any, connect_args: dict[str, Any]
) -> None:
    """A new run's event-log database as a copy of the template (`_dagster_shards`); the
    template's stamp is the head of the migrations, for the head memo when it has none."""
    memo = _memo_location()
    known = _HEADS.get(memo[2]) if memo else None
    try:
        path = storage.path_for_shard(shard)
    except Exception:
        return
    head = place_shard(path, build_with(storage, module.create_engine, connect_args), known)
    if head is not None and memo is not None:
        sql, _, location = memo
        with _alembic_lock(sql):
            _HEADS.setdefault(location, head)


def _keep_run_storage_connection() -> None:
    found = _not_rebound(_RUN_STORAGE, "SqliteRunStorage", "connect")
    if found is None:
        return
    module, storage = found

    @contextlib.contextmanager
    def connect(self: Any) -> Iterator[Any]:
        with _ENGINES.get(self._conn_string, module.create_engine, {}).connect() as conn:
            with conn.begin():
                yield conn

    connect.keeps_connections = True  # type: ignore[attr-defined]
    storage.connect = connect
