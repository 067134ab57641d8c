"""Shared test set-up.

Each pytest process (xdist worker) gets its own Metaflow datastore root, set before
Metaflow is imported so the in-process Metaflow client reads the same place the compiled
jobs and native runs write to. Flows are copied into a per-test directory below it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# the system's temp directory as the first pytest process (xdist's controller) found it: the
# workers it starts inherit the TMPDIR set below. This process's own temp files (the
# servers' data directories, which another user may have to enter) stay in it.
_SYSTEM_TMP = os.environ.setdefault("DM_TESTS_SYSTEM_TMPDIR", tempfile.gettempdir())
tempfile.tempdir = _SYSTEM_TMP
_ROOT = Path(tempfile.mkdtemp(prefix="dm-tests-"))
os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(_ROOT)
# the temp directory of every command the tests start: what runs leave there is checked
# after each workspace test (`_left_in_tmp`) and removed with the root
_TMP = _ROOT / "tmp"
_TMP.mkdir()
os.environ["TMPDIR"] = str(_TMP)
os.environ["METAFLOW_CLIENT_CACHE_PATH"] = str(_ROOT / "metaflow_client")  # not /tmp's
os.environ.setdefault("USER", "tester")
os.environ.setdefault("METAFLOW_USER", os.environ["USER"])
os.environ["DAGSTER_TELEMETRY_DISABLED"] = "1"
(_ROOT / ".metaflow").mkdir(exist_ok=True)

FLOWS = Path(__file__).parent / "flows"
BIN = Path(sys.executable).parent
# native runs start some processes as `python` (@parallel workers): use this interpreter
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def chunked_env(size: int, above: int = 0) -> dict[str, str]:
    """The environment that makes a run's chunkable foreaches wider than `above` tasks run
    in chunks of `size` (runtime/chunks.py), so small test flows take the chunked path."""
    return {"DAGSTER_METAFLOW_CHUNK_ABOVE": str(above), "DAGSTER_METAFLOW_CHUNK_SIZE": str(size)}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


@dataclass
class Workspace:
    """A directory with a copy of one fixture flow and its own Dagster instance."""

    dir: Path
    flow: Path
    dagster_home: Path

    def run(self, *args: str, check: bool = True, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args),
            cwd=self.dir,
            env=_env(**{"DAGSTER_HOME": str(self.dagster_home), **self._token_home(env), **env}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
            )
        return proc

    def _token_home(self, env: dict[str, str]) -> dict[str, str]:
        """The workspace's own token store, unless the call picks a Metaflow home (a user):
        Metaflow rewrites one token file per flow, and two workspaces deploying the same
        flow at once (a parametrized test's variants on the two workers) would race on it."""
        if "METAFLOW_HOME" in env or "METAFLOW_TOKEN_HOME" in env:
            return {}
        return {"METAFLOW_TOKEN_HOME": str(self.dir / "tokens")}

    def metaflow(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, self.flow.name, *args, **kw)

    def compile(self, *args: str, out: str = "out_dagster.py") -> Path:
        self.metaflow("dagster", "create", out, *args)
        return self.dir / out

    def dagster_execute(
        self, out: Path, job: str, config_yaml: str | None = None, check: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / "dagster"), "job", "execute", "-f", str(out), "-j", job]
        if config_yaml is not None:
            cfg = self.dir / "run_config.yaml"
            cfg.write_text(config_yaml)
            cmd += ["-c", str(cfg)]
        return self.run(*cmd, check=check, **env)

    def reexecute_from_failure(
        self, out: Path, job: str, parent_run_id: str, tags: dict[str, str] | None = None, **env: str
    ) -> tuple[str, bool]:
        """The UI's "Re-execute from failure", through Dagster's Python API in a fresh process
        (the UI also copies the parent's tags: pass them as `tags` where they matter): (the
        new Dagster run's id, whether it succeeded)."""
        code = f"""
from dagster import DagsterInstance, ReexecutionOptions, execute_job
from dagster._core.definitions.reconstruct import ReconstructableRepository
job = ReconstructableRepository.for_file({str(out)!r}, "defs").get_reconstructable_job({job!r})
with DagsterInstance.from_config({str(self.dagster_home)!r}) as instance:
    options = ReexecutionOptions.from_failure({parent_run_id!r}, instance)
    res = execute_job(job, instance, tags={tags or {}!r}, reexecution_options=options)
    print("RUN", res.run_id, res.success)
"""
        res = self.run(sys.executable, "-c", code, **env)
        _, run_id, ok = next(ln for ln in res.stdout.splitlines() if ln.startswith("RUN ")).split()
        return run_id, ok == "True"

    def last_dagster_run(self) -> Any:
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(self.dagster_home)) as instance:
            return instance.get_runs(limit=1)[0]

    def dagster_events(self, run_id: str) -> list[Any]:
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(self.dagster_home)) as instance:
            return list(instance.all_logs(run_id))

    def tasks_done(self, run_id: str) -> int:
        """The tasks `trigger --wait`'s progress line counts for the run (runs.RunProgress)."""
        from dagster_metaflow.runs import RunProgress

        progress = RunProgress(total=0)
        for event in self.dagster_events(run_id):
            progress.add(event.dagster_event)
        return progress.tasks_done

    def step_keys(self, run_id: str, event_type: str) -> set[str]:
        """Short step keys (`op_x[0_1]`) of the run's events of `event_type` ("STEP_SKIPPED")."""
        return {
            short_key(e.step_key)
            for e in self.dagster_events(run_id)
            if e.dagster_event and e.dagster_event.event_type_value == event_type
        }


@pytest.fixture
def workspace(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """Copy the flow named by the test's `flow` marker into a fresh dir under the datastore
    root; afterwards stop what its runs left running (`stop_leftovers`) and check that they
    left no zygote's socket directory in the temp directory (a killed run worker's
    included)."""
    marker = request.node.get_closest_marker("flow")
    assert marker is not None, "use @pytest.mark.flow('file.py')"
    name = marker.args[0]
    d = Path(tempfile.mkdtemp(prefix=f"{Path(name).stem}-", dir=_ROOT))
    flow = d / Path(name).name
    shutil.copy(FLOWS / name, flow)
    home = d / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    before = _left_in_tmp()
    yield Workspace(dir=d, flow=flow, dagster_home=home)
    stop_leftovers(d)
    # a zygote removes its directory once it notices that its run worker is gone
    with contextlib.suppress(AssertionError):
        wait_for("the runs' temp files to go", lambda: not (_left_in_tmp() - before), timeout=10)
    left = _left_in_tmp() - before
    assert not left, f"the test's processes left {sorted(left)} in the temp directory"


def _left_in_tmp() -> set[str]:
    """What a run must not leave in the temp directory: a zygote's socket directory."""
    from dagster_metaflow.runtime.zygote_protocol import SOCKET_DIR_PREFIX

    return {p.name for p in _TMP.glob(f"{SOCKET_DIR_PREFIX}*")}


def stop_leftovers(d: Path, grace: float = 15.0) -> None:
    """Stop the processes still working in workspace `d` (run workers, their watchdogs and
    steps: a test that failed while its run was held, or one that ended before a run it did
    not wait for). Run workers live in sessions of their own, on purpose, so nothing else
    stops them; SIGTERM lets a worker stop its steps, SIGKILL after `grace` seconds."""
    import psutil

    root, me = str(d), os.getpid()
    left = []
    for p in psutil.process_iter(["pid", "cwd"]):
        cwd = p.info["cwd"] or ""
        if p.info["pid"] != me and (cwd == root or cwd.startswith(root + os.sep)):
            left.append(p)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _gone, alive = psutil.wait_procs(left, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "flow(name): fixture flow copied into the workspace")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this process's datastore root and workspaces (~300 MB after a whole suite),
    after the session's fixtures are torn down, unless one of its tests failed: then they
    are kept for a look (their path is in the failure's output)."""
    if session.testsfailed == 0:
        shutil.rmtree(_ROOT, ignore_errors=True)


def artifacts_by_task(pathspec: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """{(step, foreach index path, loop iteration path): {artifact: value}}, user artifacts only."""
    from metaflow import Run, namespace

    namespace(None)
    out: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
    for step in Run(pathspec).steps():
        for task in step.tasks():
            stack = task["_foreach_stack"].data if "_foreach_stack" in task else []
            path = tuple(frame.index for frame in stack or [])
            loops = tuple(task["_iteration_stack"].data or ()) if "_iteration_stack" in task else ()
            out[(step.id, path, loops)] = {
                a.id: _comparable(a.data) for a in task.artifacts if not a.id.startswith("_") and a.id != "name"
            }
    return out


def _comparable(value: Any) -> Any:
    """Objects without their own equality compare by repr (e.g. an unbounded foreach input)."""
    return repr(value) if type(value).__eq__ is object.__eq__ else value


def latest_run_pathspec(flow_name: str, prefix: str | None = None) -> str:
    from metaflow import Flow, namespace

    namespace(None)
    for run in Flow(flow_name).runs():
        if prefix is None or run.id.startswith(prefix):
            return run.pathspec
    raise AssertionError(f"no run of {flow_name} found")


def stop_group(*procs: subprocess.Popen[Any], grace: float = 30) -> None:
    """SIGTERM each server's process group (started with start_new_session=True), then
    SIGKILL what is still there after `grace` seconds."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(what: str, check: Any, timeout: float, every: float = 0.3) -> Any:
    """The first truthy value of `check()`; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def survivors(pids: Iterable[int], within: float) -> list[int]:
    """The processes of `pids` still alive (not zombies) after waiting up to `within` s."""
    import psutil

    def alive() -> list[int]:
        out = []
        for p in pids:
            try:
                if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.monotonic() + within
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive()


FLOWS = Path(__file__).parent / "flows"


def load_flow_class(filename: str, prefix: str = "fixture") -> Any:
    """The FlowSpec subclass defined in tests/flows/<filename>, imported without running it."""
    import importlib.util

    from metaflow import FlowSpec

    path = FLOWS / filename
    spec = importlib.util.spec_from_file_location(f"{prefix}_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(
        v
        for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, FlowSpec) and v is not FlowSpec
    )


def short_key(step_key: str) -> str:
    """A step key without the flow's graph-asset prefix: `Flow_steps.op_work[2]` -> `op_work[2]`."""
    head, bracket, rest = step_key.partition("[")
    return head.rsplit(".", 1)[-1] + bracket + rest


def script_reads(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[object]]:
    """For one test: Dagster's schema checks as they are now (restored after the test), an
    empty head memo, and every read of the migration scripts recorded. Returns Dagster's
    own check and the list of reads."""
    import importlib

    from alembic.script import ScriptDirectory

    from dagster_metaflow import _dagster_sqlite

    bindings = {
        name: importlib.import_module(name).check_alembic_revision
        for name in _dagster_sqlite._ALEMBIC_CHECKERS
        if hasattr(importlib.import_module(name), "check_alembic_revision")
    }
    for name, bound in bindings.items():
        monkeypatch.setattr(importlib.import_module(name), "check_alembic_revision", bound)
    monkeypatch.setattr(_dagster_sqlite, "_HEADS", {})
    reads: list[object] = []
    from_config = ScriptDirectory.from_config.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        ScriptDirectory,
        "from_config",
        classmethod(lambda cls, config: reads.append(config) or from_config(cls, config)),
    )
    return bindings[_dagster_sqlite._ALEMBIC_CHECKERS[0]], reads


@pytest.fixture
def kept_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Our kept SQLite connections (`_dagster_sqlite.keep_sqlite_connections`, which also
    copy new run databases from a template) for one test; Dagster's own methods are
    restored after."""
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

    from dagster_metaflow import _dagster_sqlite

    monkeypatch.setattr(SqliteEventLogStorage, "_connect", SqliteEventLogStorage._connect)
    monkeypatch.setattr(SqliteRunStorage, "connect", SqliteRunStorage.connect)
    _dagster_sqlite.keep_sqlite_connections()
    _dagster_sqlite.keep_sqlite_connections()  # twice: wrapped once
    yield
    _dagster_sqlite.release_sqlite_connections()


def engine_event(run_id: str, n: int) -> Any:
    """An event of a run, "event <n>", as a run's executor stores it."""
    from dagster import DagsterEventType
    from dagster._core.events import DagsterEvent, EngineEventData
    from dagster._core.events.log import EventLogEntry

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
