"""Remote compute (@kubernetes, @batch) and @conda/@pypi steps, without a cluster.

A remote task runs the flow's code package on a machine where dagster-metaflow is not
installed; the command a Dagster op launches for it must be the one Metaflow's own runtime
launches for the same task.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace

FLOWS = Path(__file__).parent.parent / "flows"


def test_code_package_loads_without_dagster_metaflow_installed(tmp_path: Path) -> None:
    """Metaflow copies this project's extension into every code package: where only the
    package is (a pod, a conda environment), importing Metaflow must still work and the
    `dagster_internal` decorator every task carries must resolve."""
    script = tmp_path / "make_package.py"
    script.write_text(
        "import sys\n"
        "from metaflow import FlowSpec, step\n"
        "class P(FlowSpec):\n"
        "    @step\n"
        "    def start(self):\n"
        "        self.next(self.end)\n"
        "    @step\n"
        "    def end(self):\n"
        "        pass\n"
        "from metaflow.metaflow_environment import MetaflowEnvironment\n"
        "from metaflow.package import MetaflowPackage\n"
        "flow = P(use_cli=False)\n"
        "pkg = MetaflowPackage(flow, MetaflowEnvironment(flow), lambda *a, **k: None)\n"
        "sys.stdout.buffer.write(bytes(pkg.blob))\n"
    )
    blob = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, check=True).stdout
    root = tmp_path / "pod"
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(root, filter="data")
    probe = (
        "import importlib.util, metaflow.plugins as p\n"
        "assert importlib.util.find_spec('dagster_metaflow') is None\n"
        "assert p.__file__.startswith('.mf_code') or '/pod/.mf_code/' in p.__file__, p.__file__\n"
        "print(sorted(d.name for d in p.STEP_DECORATORS if d.name.startswith('dagster')))\n"
        "print(sorted(p.DEPLOYER_IMPL_PROVIDERS and [d.TYPE for d in p.DEPLOYER_IMPL_PROVIDERS]))\n"
    )
    # -S: site-packages only as a plain path (its .pth files, hence the editable install of
    # dagster_metaflow, are not processed); the package's own Metaflow comes first
    import sysconfig

    path = f"{root / '.mf_code'}:{sysconfig.get_paths()['purelib']}"
    proc = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        cwd=root,
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "USER": "tester"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "['dagster_internal']"
    assert "dagster" not in proc.stdout.split("\n")[1]


# -- @kubernetes / @batch: the command equals the one Metaflow's runtime launches ----------

TOP_LEVEL = (
    "--quiet",
    "--metadata=local",
    "--environment=local",
    "--event-logger=nullSidecarLogger",
    "--monitor=nullSidecarMonitor",
    "--no-pylint",
)
DATASTORE_ROOT = "s3://dm-test-bucket/metaflow"
# a package `create` saved: building a command needs its url/sha/metadata, never S3 itself
PACKAGE = {
    "url": f"{DATASTORE_ROOT}/RemoteFlow/data/5e/5e1f0c0ffee",
    "sha": "5e1f0c0ffee",
    "metadata": '{"version": 0, "archive_format": "tgz", "mfcontent_version": 1}',
}
EXTENSIONS = Path(__file__).parent.parent / "extensions"


def _remote_ir(datastore: str = "s3") -> Any:
    from metaflow.graph import FlowGraph

    from dagster_metaflow.ir import IROptions, build_flow_ir

    spec = importlib.util.spec_from_file_location("fixture_remote_flow", FLOWS / "remote_flow.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    options = IROptions(
        job_name="RemoteFlow", flow_file="remote_flow.py", top_level_args=TOP_LEVEL, datastore_type=datastore
    )
    return build_flow_ir(module.RemoteFlow, FlowGraph(module.RemoteFlow), options)


def test_remote_steps_are_marked_in_the_ir_and_refused_on_the_local_datastore() -> None:
    from dagster_metaflow.codegen import render
    from dagster_metaflow.ir import IRError

    ir = _remote_ir()
    assert [(s.name, s.launcher, s.remote) for s in ir.steps if s.launcher] == [
        ("train", "kubernetes", "kubernetes"),
        ("report", "batch", "batch"),
    ]
    text = render(ir)
    assert 'launcher="kubernetes"' in text and 'launcher="batch"' in text
    assert '"metaflow/launcher": "kubernetes"' in text
    with pytest.raises(
        IRError,
        match=r"^@kubernetes on step 'train' needs a remote datastore \(--datastore=s3/azure/gs\): "
        r"a remote task cannot read the local one$",
    ):
        _remote_ir("local")


def _json_of(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> dict[str, Any]:
    proc = subprocess.run(list(argv), cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "step, task_id, inputs, split_index, retry_count, tags, namespace",
    [
        # a foreach task on Kubernetes, first attempt, with the run's tags
        ("train", "train-1", ["R/start/start"], 1, 0, ("team:ml", "nightly"), None),
        # after its user-code retries: @kubernetes leaves the (fallback) attempt local
        ("train", "train-0", ["R/start/start"], 0, 3, (), None),
        # AWS Batch, in a given namespace
        ("report", "report", ["R/join/join"], None, 1, ("nightly",), "team:ml"),
    ],
)
def test_remote_step_command_equals_metaflows_own(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    task_id: str,
    inputs: list[str],
    split_index: int | None,
    retry_count: int,
    tags: tuple[str, ...],
    namespace: str | None,
) -> None:
    """The op's `dagster launch-step` (dry run: the command it would start) against Metaflow's
    runtime (NativeRuntime hooks, `runtime.Task`, `Worker._launch`) for the same task."""
    from dagster_metaflow.runtime.command import StepCommand
    from dagster_metaflow.runtime.flow import MetaflowFlow
    from dagster_metaflow.task_options import TaskOptions

    ir = _remote_ir()
    s = ir.step(step)
    shutil.copy(FLOWS / "remote_flow.py", tmp_path / "remote_flow.py")
    # steps normally run the package's copy of the flow file (extracted from S3 here)
    monkeypatch.setattr(StepCommand, "flow_path", property(lambda self: self.source_path))
    flow = MetaflowFlow(
        name="RemoteFlow",
        file=str(tmp_path / "remote_flow.py"),
        top_level_args=TOP_LEVEL,
        datastore_type="s3",
        datastore_root=DATASTORE_ROOT,
        namespace=namespace,
        code_package=PACKAGE,
    )
    run_id = "dagster-0123456789ab"
    paths = [p.replace("R/", f"{run_id}/") for p in inputs]
    task = TaskOptions(
        step=step,
        run_id=run_id,
        task_id=task_id,
        input_paths=tuple(paths),
        retry_count=retry_count,
        max_user_code_retries=s.max_user_code_retries,
        tags=tags,
        split_index=split_index,
        namespace=namespace,
        decorator_specs=s.decorator_specs,
        launcher=s.launcher,
    )
    ours = flow.step_argv(task.with_package(PACKAGE))
    assert ours[ours.index("dagster") + 1] == "launch-step"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_RUN_ID")}
    env["PYTHONPATH"] = str(EXTENSIONS)  # the test extension's `dm-native` command
    env["PYTHONHASHSEED"] = "0"  # Metaflow passes the run's tags in the order of a set
    launched = _json_of([*ours, "--dry-run"], tmp_path, flow.launcher_env(env))

    native = ours[: ours.index("dagster")] + ["dm-native", "step-command", step]
    native += ["--run-id", run_id, "--task-id", task_id, "--input-paths", ",".join(paths)]
    native += ["--retry-count", str(retry_count)]
    if split_index is not None:
        native += ["--split-index", str(split_index)]
    for tag in tags:
        native += ["--tag", tag]
    if namespace is not None:
        native += ["--namespace", namespace]
    native += [f"--package-{k}={v}" for k, v in PACKAGE.items()]
    expected = _json_of(native, tmp_path, env)

    diff = [(i, a, b) for i, (a, b) in enumerate(zip(launched["argv"], expected["argv"], strict=False)) if a != b]
    assert launched["argv"] == expected["argv"], diff[:3] or (len(launched["argv"]), len(expected["argv"]))
    assert launched["env"] == expected["env"]
    argv = launched["argv"]
    if retry_count <= s.max_user_code_retries:
        remote = s.launcher
        assert argv[argv.index(remote) : argv.index(remote) + 6] == [
            remote, "step", step, PACKAGE["metadata"], PACKAGE["sha"], PACKAGE["url"],
        ]
    else:
        assert "kubernetes" not in argv and argv[argv.index("step") + 1] == step
    assert launched["env"]["METAFLOW_RUN_ID"] == run_id


@pytest.mark.flow("remote_flow.py")
def test_create_refuses_remote_compute_on_the_local_datastore(workspace: Workspace) -> None:
    """Through the real CLI: Metaflow's own check (the decorator's step_init) stops a static
    @kubernetes before `dagster create` runs; ours names a `--with` one."""
    proc = workspace.metaflow("--datastore=local", "dagster", "create", "out.py", check=False)
    assert proc.returncode == 1
    # (it checks the steps in name order: `report`'s @batch first)
    assert proc.stderr.strip().splitlines()[-1].strip() == "The @batch decorator requires --datastore=s3."
    assert not (workspace.dir / "out.py").exists()

    hello = workspace.dir / "hello_flow.py"
    shutil.copy(FLOWS / "hello_flow.py", hello)
    proc = workspace.run(
        sys.executable, hello.name, "--datastore=local", "dagster", "create", "out.py", "--with", "kubernetes:cpu=2",
        check=False,
    )
    assert proc.returncode == 1
    lines = [ln.strip() for ln in proc.stderr.strip().splitlines()]
    assert lines[-1] == (
        "@kubernetes given with --with needs a remote datastore (--datastore=s3/azure/gs): "
        "a remote task cannot read the local one"
    ), proc.stderr
    assert not (workspace.dir / "out.py").exists()


@pytest.mark.flow("linear_flow.py")
def test_launch_step_runs_the_task_and_returns_its_exit_code(workspace: Workspace) -> None:
    """Not a dry run: `dagster launch-step` runs the command it built and exits with the
    task's code; the task is a normal Metaflow task (its artifacts, its metadata)."""
    import tempfile

    from metaflow import Task, namespace

    from dagster_metaflow.runtime.flow import MetaflowFlow
    from dagster_metaflow.task_options import TaskOptions

    root = os.path.join(os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"], ".metaflow")
    flow = MetaflowFlow(
        name="LinearFlow",
        file=str(workspace.flow),
        top_level_args=TOP_LEVEL,
        datastore_type="local",
        datastore_root=root,
    )
    run_id = "dagster-launch" + next(tempfile._get_candidate_names())
    env = flow.launcher_env({**flow.step_env(), "METAFLOW_RUN_ID": run_id})
    env = {k: v for k, v in env.items() if os.environ.get(k) != v}  # what the op adds
    workspace.run(*flow.base_argv(), "init", "--run-id", run_id, "--task-id", "t-params", **env)

    start = TaskOptions("start", run_id, "start", (f"{run_id}/_parameters/t-params",), launcher="conda")
    argv = flow.step_argv(start)
    proc = workspace.run(*argv, check=False, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    namespace(None)
    task = Task(f"LinearFlow/{run_id}/start/start")
    assert task.successful and task.data.x == 1
    assert "runtime:dagster" in task.system_tags

    # a task that fails (its input does not exist): the launcher exits with its code
    argv = flow.step_argv(TaskOptions("a", run_id, "a", (f"{run_id}/start/nope",), launcher="conda"))
    proc = workspace.run(*argv, check=False, **env)
    assert proc.returncode == 1 and "[dagster-metaflow launch failed]" not in proc.stderr


@pytest.mark.flow("hello_flow.py")
def test_create_refuses_a_remote_step_without_its_code_package(workspace: Workspace) -> None:
    """A remote task runs the package `create` saves; when Metaflow cannot make it (here the
    `kubernetes` client, which @kubernetes needs to package the code, is not installed),
    `create` stops with one line and writes nothing."""
    if importlib.util.find_spec("kubernetes") is not None:
        pytest.skip("the kubernetes client is installed: packaging would need a real S3 bucket")
    proc = workspace.metaflow(
        "--datastore=s3", f"--datastore-root={DATASTORE_ROOT}", "dagster", "create", "out.py",
        "--with", "kubernetes", check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].strip() == (
        "@kubernetes on step 'start' needs the flow's code package in the datastore, which could not "
        "be saved (KubernetesException: Could not import module 'kubernetes'.); no file was written"
    ), proc.stderr
    assert not (workspace.dir / "out.py").exists()


@pytest.mark.flow("linear_flow.py")
def test_launcher_records_the_dagster_run_of_a_remote_task(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pod never gets the op's environment, so `dagster launch-step` records the task's
    dagster-* metadata itself once the remote task ended, with Metaflow's own provider: the
    client then links the task to its Dagster run as for a local task."""
    from types import SimpleNamespace

    from metaflow import Flow, Task, namespace
    from metaflow.metaflow_environment import MetaflowEnvironment
    from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

    from dagster_metaflow.runtime.native import record_dagster_metadata
    from dagster_metaflow.task_options import TaskOptions

    workspace.metaflow("run", "--run-id-file", "rid")
    run_id = (workspace.dir / "rid").read_text().strip()
    namespace(None)
    start = next(iter(Flow("LinearFlow")[run_id]["start"]))
    for var, value in {
        "DAGSTER_METAFLOW_DAGSTER_RUN_ID": "d-123",
        "DAGSTER_METAFLOW_JOB": "LinearFlow",
        "DAGSTER_METAFLOW_STEP_KEY": "op_start",
        "DAGSTER_METAFLOW_RUN_URL": "http://127.0.0.1:3000/runs/d-123",
        "DAGSTER_METAFLOW_TRIGGERS": '[{"type": "event", "name": "e"}]',
    }.items():
        monkeypatch.setenv(var, value)
    flow = SimpleNamespace(name="LinearFlow")
    obj = SimpleNamespace(
        graph=SimpleNamespace(start_step="start"),
        metadata=LocalMetadataProvider(MetaflowEnvironment(flow), flow, None, None),
    )
    record_dagster_metadata(obj, TaskOptions(step="start", run_id=run_id, task_id=start.id, input_paths=()))
    meta = Task(start.pathspec).metadata_dict
    assert meta["dagster-run-id"] == "d-123" and meta["dagster-step-key"] == "op_start"
    assert meta["dagster-run-url"].endswith("/runs/d-123")
    assert meta["execution-triggers"] == '[{"type": "event", "name": "e"}]'  # Run.trigger

    # a provider that cannot write: one line, the task's outcome is left alone
    class ReadOnly:
        def register_metadata(self, *args: Any) -> None:
            raise OSError("read-only")

    obj.metadata = ReadOnly()
    record_dagster_metadata(obj, TaskOptions(step="start", run_id=run_id, task_id=start.id, input_paths=()))
    assert "could not record the Dagster run on start/" in capsys.readouterr().err
