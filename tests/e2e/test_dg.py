"""`dagster_metaflow.MetaflowFlowComponent` through the real `dg` CLI, in a project made by
`create-dagster`: listed, scaffolded, checked (and refused, one line per bad attribute),
listed as definitions, launched, and the run seen by Metaflow's client and by
`python flow.py dagster list-runs/status`.

The project is not installed anywhere: dg runs with the project's `src` on PYTHONPATH and
this interpreter's `bin` first on PATH (dg runs definitions in the interpreter running it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BIN, FLOWS, stop_group, survivors

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e

TYPE = "dagster_metaflow.MetaflowFlowComponent"


@dataclass
class Project:
    root: Path
    home: Path

    @property
    def defs(self) -> Path:
        return self.root / "src" / "proj" / "defs"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=str(self.root / "src"),
            DAGSTER_HOME=str(self.home),
            DAGSTER_DG_UPDATE_CHECK_ENABLED="0",
            DAGSTER_TELEMETRY_DISABLED="1",
            NO_COLOR="1",
            COLUMNS="250",
            DM_TEST_WORKERS="4",
        )
        return env

    def run(
        self, *args: str, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args),
            cwd=cwd or self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                f"STDERR:\n{proc.stderr[-6000:]}"
            )
        return proc

    def dg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "dg"), *args, check=check)


def _scaffold(project: Project, folder: str, flow: str) -> Path:
    """`dg scaffold defs` one flow, then put the fixture flow in place of the starter."""
    project.dg("scaffold", "defs", TYPE, f"flows/{folder}", "--flow-file", flow)
    target = project.defs / "flows" / folder
    shutil.copy(FLOWS / flow, target / flow)
    return target


def _check_bad(project: Project, attributes: str) -> tuple[Path, str]:
    """`dg check defs` with one more component whose `attributes:` are given; it must fail.
    Returns that defs.yaml and dg's output."""
    folder = project.defs / "flows" / "bad"
    folder.mkdir()
    yaml = folder / "defs.yaml"
    yaml.write_text(f"type: {TYPE}\n\nattributes:\n  {attributes}\n")
    try:
        proc = project.dg("check", "defs", check=False)
    finally:
        shutil.rmtree(folder)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    return yaml, out


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    if not (BIN / "dg").exists() or not (BIN / "create-dagster").exists():
        pytest.skip("needs dagster-dg-cli and create-dagster == dagster's version (make install)")
    base = tmp_path_factory.mktemp("dg")
    home = base / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proj = Project(root=base / "proj", home=home)
    # the README's way, pip and no uv; told so, since it asks whenever a uv is on PATH
    proj.run(str(BIN / "create-dagster"), "project", "--no-uv-sync", "proj", cwd=base)
    assert proj.defs.is_dir()
    hello = _scaffold(proj, "hello", "hello_flow.py")
    linear = _scaffold(proj, "linear", "linear_flow.py")
    with open(linear / "defs.yaml", "a") as f:
        f.write(
            '  name: linear_job\n  tags: [dg]\n  max_workers: "{{ env.DM_TEST_WORKERS }}"\n'
            "  assets: [final]\n  workflow_priority: 3\n  workflow_title: Nightly linear\n"
            "  notify:\n    on_error: true\n    slack_webhook_url: env:DM_SLACK_HOOK\n"
        )
    assert (hello / "defs.yaml").is_file()
    return proj


def test_dg_lists_and_scaffolds_the_component(project: Project, tmp_path: Path) -> None:
    listed = json.loads(project.dg("list", "components", "--json").stdout)
    assert TYPE in [item["key"] for item in listed["items"]]
    yaml = (project.defs / "flows" / "hello" / "defs.yaml").read_text()
    assert f"type: {TYPE}" in yaml and "flow_file: hello_flow.py" in yaml
    # a starter flow is written when the flow file does not exist yet
    project.dg("scaffold", "defs", TYPE, "flows/starter", "--flow-file", "train_flow.py")
    starter = project.defs / "flows" / "starter"
    try:
        assert "class TrainFlow(FlowSpec):" in (starter / "train_flow.py").read_text()
        assert "flow_file: train_flow.py" in (starter / "defs.yaml").read_text()
    finally:
        shutil.rmtree(starter)


def test_check_defs_compiles_once(project: Project) -> None:
    project.dg("check", "defs")
    cache = project.root / ".dagster_metaflow"
    entry = cache / "flows" / "linear"
    generated = entry / "linear_flow_dagster.py"
    assert generated.is_file() and (entry / "cache_key").is_file()
    assert (cache / "flows" / "hello" / "hello_flow_dagster.py").is_file()
    assert (cache / ".gitignore").read_text().strip().endswith("*")
    # max_workers came from "{{ env.DM_TEST_WORKERS }}": the executor's default concurrency
    text = generated.read_text()
    assert '{"max_concurrent": 4}' in text
    # create's operability options: priority and title on the job, the notification sensor
    assert '"dagster/priority": "3"' in text and "Nightly linear" in text
    assert 'slack_webhook_url="env:DM_SLACK_HOOK"' in text and 'name="linear_job_notify_on_error"' in text
    before = generated.stat().st_mtime_ns
    project.dg("check", "defs")  # a hit: nothing is compiled again
    assert generated.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "attribute, line, field, message",
    [
        ("flow_file: nope.py", 4, "flow_file", "no such flow file"),
        ("flow_file: ../linear/linear_flow.py\n  max_workers: 0", 5, "max_workers", "expected an integer >= 1, got 0"),
        ("flow_file: ../linear/linear_flow.py\n  name: bad-name", 5, "name", "is not a valid Dagster name"),
    ],
)
def test_a_bad_attribute_fails_check_naming_it(
    project: Project, attribute: str, line: int, field: str, message: str
) -> None:
    yaml, out = _check_bad(project, attribute)
    assert f"{yaml}:{line} - attributes.{field}" in out, out[-3000:]
    errors = [ln for ln in out.splitlines() if ln.startswith(f"ValueError: attributes.{field}: ")]
    assert errors and message in errors[0], out[-3000:]


def test_a_compile_error_is_one_line_naming_defs_yaml_and_the_flow(project: Project) -> None:
    yaml, out = _check_bad(project, "flow_file: ../linear/linear_flow.py\n  with: [nosuchdeco]")
    line = f"ComponentCompileError: {yaml}: cannot compile ../linear/linear_flow.py: "
    assert f"{line}Unknown step decorator nosuchdeco" in out, out[-3000:]


def test_list_defs_shows_both_jobs(project: Project) -> None:
    listed = json.loads(project.dg("list", "defs", "--json").stdout)
    jobs = {job["name"] for job in listed["jobs"]}
    assert {"HelloFlow", "linear_job"} <= jobs, listed["jobs"]
    # `assets: [final]` reached the compile (create --asset final)
    assert any(a["asset_key_parts"][-1] == "final" for a in listed["assets"]), listed["assets"]


def test_launch_runs_the_flow_seen_by_metaflow_and_the_cli(project: Project) -> None:
    from dagster import DagsterInstance, DagsterRunStatus
    from metaflow import Run, namespace

    project.dg("launch", "--job", "linear_job")
    with DagsterInstance.from_config(str(project.home)) as instance:
        runs = instance.get_runs()
        run = next(r for r in runs if r.job_name == "linear_job")
        assert run.status == DagsterRunStatus.SUCCESS
        materialized = [
            e.dagster_event.asset_key.path[-1]
            for e in instance.all_logs(run.run_id)
            if e.dagster_event is not None and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"
        ]
        assert "final" in materialized, materialized
    mf_id = metaflow_run_id(run.run_id)
    namespace(None)
    mf_run = Run(f"LinearFlow/{mf_id}")
    assert mf_run.successful and mf_run["end"].task["final"].data == 20
    assert "dg" in mf_run.tags
    flow_dir = project.defs / "flows" / "linear"
    cli = (sys.executable, "linear_flow.py", "dagster", "--name", "linear_job")
    listed = project.run(*cli, "list-runs", cwd=flow_dir).stdout
    assert f"LinearFlow/{mf_id}" in listed and "SUCCEEDED" in listed, listed
    status = project.run(*cli, "status", "--run-id", mf_id, cwd=flow_dir).stdout
    assert status.startswith(f"LinearFlow/{mf_id}: ") and run.run_id in status, status


def test_dg_dev_serves_the_assets_and_a_ui_launch_runs_the_flow(project: Project) -> None:
    """`dg dev` (webserver + daemon): both flows' assets in the catalog, and a run submitted
    through the webserver's GraphQL API (what the UI's Launchpad does) runs the flow."""
    import time

    from dagster import DagsterInstance, DagsterRunStatus
    from dagster_graphql import DagsterGraphQLClient
    from metaflow import Run, namespace
    from services import free_port

    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "dg"), "dev", "--host", "127.0.0.1", "--port", str(port)],
        cwd=project.root, env=project.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        query = "{ assetNodes { assetKey { path } groupName } }"
        deadline = time.monotonic() + 120
        nodes = None
        while nodes is None:
            try:
                nodes = client._execute(query)["assetNodes"]  # noqa: SLF001 - raw GraphQL
            except Exception:
                assert time.monotonic() < deadline, "dg dev did not serve the project"
                time.sleep(1)
        keys = {tuple(n["assetKey"]["path"]): n["groupName"] for n in nodes}
        assert keys[("HelloFlow",)] == "HelloFlow" and keys[("LinearFlow", "final")] == "linear_job"
        run_id = client.submit_job_execution("HelloFlow")
        with DagsterInstance.from_config(str(project.home)) as instance:
            deadline = time.monotonic() + 180
            while True:
                run = instance.get_run_by_id(run_id)
                assert run is not None
                if run.is_finished:
                    break
                assert time.monotonic() < deadline, f"run {run_id} still {run.status}"
                time.sleep(1)
            assert run.status == DagsterRunStatus.SUCCESS, run.status
    finally:
        import psutil

        try:  # the webserver, daemon and code servers dg dev started
            tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            tree = [proc.pid]
        stop_group(proc)
    namespace(None)
    assert Run(f"HelloFlow/{metaflow_run_id(run_id)}").successful
    assert not survivors(tree, within=15)
