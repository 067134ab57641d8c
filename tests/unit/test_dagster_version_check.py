"""The private-API module refuses an untested Dagster with one clear line, and what it
changes in Dagster keeps Dagster's answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Workspace, script_reads

from dagster_metaflow import _dagster_private as private
from dagster_metaflow import _dagster_sqlite


@pytest.mark.parametrize("found", ["1.11.10", "1.12.0", "1.13.28", "1!0+dev"])
def test_supported_versions_pass(found: str) -> None:
    private.check_version(found)


@pytest.mark.parametrize("found", ["1.11.9", "1.10.21", "1.14.0", "1.14.0rc1", "2.0.0", "garbage"])
def test_unsupported_version_names_found_and_range(found: str) -> None:
    with pytest.raises(ImportError) as err:
        private.check_version(found)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"found dagster {found}" in msg
    assert f"dagster{private.supported_range()}" in msg
    assert f"pip install 'dagster{private.supported_range()}'" in msg


def _import_with_version(version: str, **extra: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import dagster\n"
        f"dagster.__version__ = {version!r}\n"
        "import dagster_metaflow._dagster_private\n"
        "print('imported')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k != private.SKIP_ENV}, **extra},
        timeout=120,
    )


def test_importing_with_an_untested_dagster_fails_with_one_line() -> None:
    proc = _import_with_version("1.99.0")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dagster_metaflow._dagster_private.UnsupportedDagsterVersion: ")
    assert "found dagster 1.99.0" in last and private.supported_range() in last
    # the check can be skipped on purpose
    proc = _import_with_version("1.99.0", **{private.SKIP_ENV: "1"})
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr


@pytest.mark.flow("hello_flow.py")
def test_cli_refuses_an_untested_dagster_in_one_line(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python flow.py dagster ...` says which Dagster it found and which it needs."""
    monkeypatch.delenv(private.SKIP_ENV, raising=False)
    site = workspace.dir / "fake_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import dagster\ndagster.__version__ = '1.99.0'\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    proc = workspace.metaflow("dagster", "create", check=False, PYTHONPATH=path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "found dagster 1.99.0" in proc.stderr and private.supported_range() in proc.stderr
    assert not (workspace.dir / "hello_flow_dagster.py").exists()


def test_every_private_api_exists_in_the_installed_dagster() -> None:
    """The private APIs are imported on first use; this imports them all, so a Dagster that
    lacks one fails here and not first in a run."""
    private.check_imports()
    assert callable(private.create_run) and private.ExecutionPlan is not None
    with pytest.raises(AttributeError):
        private.no_such_api  # noqa: B018


def test_the_migration_head_is_read_once_per_process_and_the_database_revision_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`remember_alembic_heads` keeps Dagster's answer: a fresh SQLite instance is created
    and stamped, an existing one opens with the same revisions, an old one is still told
    to migrate (its own revision is read at every open); the scripts are read once."""
    import sqlalchemy
    from dagster import DagsterInstance
    from dagster._core.storage import sql
    from dagster._core.storage.runs.sqlite import sqlite_run_storage

    original, reads = script_reads(monkeypatch)
    _dagster_sqlite.remember_alembic_heads()
    _dagster_sqlite.remember_alembic_heads()  # twice: still one memo
    memo = sqlite_run_storage.check_alembic_revision
    assert memo is sql.check_alembic_revision and getattr(memo, "remembers_heads", False)
    opened = []
    for _ in range(3):
        with DagsterInstance.local_temp(str(tmp_path)) as instance:
            list(instance.get_runs(limit=1))
        opened.append(len(reads))
    # the first open creates and stamps the storages (alembic's own reads) and reads the
    # head once; opening the instance again reads no script
    assert opened[0] >= 1 and opened[1] == opened[2] == opened[0]
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/history/runs.db")
    config = sql.get_alembic_config(sqlite_run_storage.__file__)
    try:
        with engine.connect() as conn:
            fresh, unmemoised = memo(config, conn), original(config, conn)
            conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'old'"))
            conn.commit()
            old = memo(config, conn)
    finally:
        engine.dispose()
    assert fresh == unmemoised and fresh[0] == fresh[1]
    assert old == ("old", fresh[1])


def test_a_process_that_forks_run_workers_reads_the_migration_head_before_any_storage_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`warm_alembic_heads` (the worker zygote): the head is read once, before any storage
    opens; it is the head Dagster's own check finds, and the check every storage calls
    answers from it, so an instance opened afterwards reads no migration script."""
    import sqlalchemy
    from dagster import DagsterInstance
    from dagster._core.storage import sql
    from dagster._core.storage.runs.sqlite import sqlite_run_storage

    with DagsterInstance.local_temp(str(tmp_path)):  # created (and stamped) before: no memo yet
        pass
    original, reads = script_reads(monkeypatch)
    _dagster_sqlite.warm_alembic_heads()
    assert len(reads) == 1 and len(_dagster_sqlite._HEADS) == 1
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        list(instance.get_runs(limit=1))
    assert len(reads) == 1  # opening the instance read no script
    config = sql.get_alembic_config(sqlite_run_storage.__file__)
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/history/runs.db")
    try:
        with engine.connect() as conn:
            [(location, head)] = _dagster_sqlite._HEADS.items()
            assert head == original(config, conn)[1]  # Dagster's own answer
            _dagster_sqlite._HEADS[location] = "the memo's"
            assert sqlite_run_storage.check_alembic_revision(config, conn)[1] == "the memo's"
    finally:
        engine.dispose()
