"""Compile real flows, run them under Dagster and natively, compare through the Metaflow client."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import BIN, Workspace, artifacts_by_task, latest_run_pathspec, short_key

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e


def run_both(
    ws: Workspace,
    flow_name: str,
    job: str | None = None,
    native_args: tuple[str, ...] = (),
    config_yaml: str | None = None,
    create_args: tuple[str, ...] = (),
) -> tuple[str, str]:
    """Run natively and under Dagster; return (native pathspec, dagster pathspec)."""
    ws.metaflow("run", *native_args)
    native = latest_run_pathspec(flow_name)
    out = ws.compile(*create_args)
    ws.dagster_execute(out, job or flow_name, config_yaml)
    run = ws.last_dagster_run()
    return native, f"{flow_name}/{metaflow_run_id(run.run_id)}"


@pytest.mark.flow("hello_flow.py")
def test_foreach_and_split_match_native(workspace: Workspace) -> None:
    from metaflow import Run

    native, dag = run_both(workspace, "HelloFlow")
    assert artifacts_by_task(dag) == artifacts_by_task(native)
    run = Run(dag)
    assert run.successful and run.finished
    assert sorted(s.id for s in run.steps()) == sorted(s.id for s in Run(native).steps())
    assert run["square"].task.stdout.startswith("square")
    # `python flow.py logs` works for a Dagster-launched run
    logs = workspace.metaflow("logs", f"{dag.split('/', 1)[1]}/square").stdout
    assert "square" in logs
    # the foreach task's metadata is on its op's first dynamic output only, not repeated on
    # every child's (in a 10,000-wide run that was 1.2 KB of event log per child)
    outputs = [
        e.dagster_event.event_specific_data
        for e in workspace.dagster_events(workspace.last_dagster_run().run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_OUTPUT" and short_key(e.step_key) == "op_start"
    ]
    assert len(outputs) > 1 and [bool(o.metadata) for o in outputs] == [True] + [False] * (len(outputs) - 1)
    assert outputs[0].metadata["pathspec"].value.split("/")[2] == "start"


@pytest.mark.flow("linear_flow.py")
def test_linear_and_definitions_validate(workspace: Workspace) -> None:
    from metaflow import Run

    native, dag = run_both(workspace, "LinearFlow", create_args=("--tag", "team:ml", "--tag", "nightly"))
    assert artifacts_by_task(dag) == artifacts_by_task(native)
    assert {"team:ml", "nightly"} <= set(Run(dag).tags)
    out = workspace.dir / "out_dagster.py"
    res = workspace.run(str(BIN / "dagster"), "definitions", "validate", "-f", str(out))
    assert res.returncode == 0
    # the generated module is importable and runs in-process as the spec promises
    code = (
        "import sys; sys.path.insert(0, '.');"
        "from out_dagster import defs; r = defs.resolve_job_def('LinearFlow').execute_in_process(); "
        "print('OK', r.success)"
    )
    res = workspace.run(sys.executable, "-c", code)
    assert "OK True" in res.stdout


@pytest.mark.flow("params_flow.py")
def test_parameters_typed_config(workspace: Workspace) -> None:
    native_args = ("--needed", "7", "--alpha", "2.5", "--learning-rate", "0.3", "--flag", "True")
    cfg = (
        "ops:\n  ParamsFlow_steps:\n    ops:\n      op_start:\n        config:\n"
        "          needed: 7\n          alpha: 2.5\n          learning-rate: 0.3\n"
        "          flag: true\n"
    )
    native, dag = run_both(workspace, "ParamsFlow", native_args=native_args, config_yaml=cfg)
    a, b = artifacts_by_task(dag), artifacts_by_task(native)
    assert a == b
    seen = a[("start", (), ())]["seen"]
    assert seen["needed"] == 7 and seen["alpha"] == 2.5 and seen["flag"] is True
    assert seen["learning_rate"] == 0.3 and seen["config_json"] == {"a": [1, 2]}
    assert seen["label"] == 'it\'s "quoted"' and seen["maybe"] is None


@pytest.mark.flow("params_flow.py")
def test_required_parameter_is_required(workspace: Workspace) -> None:
    out = workspace.compile()
    res = workspace.dagster_execute(out, "ParamsFlow", check=False)
    assert res.returncode != 0
    assert "needed" in (res.stdout + res.stderr)


@pytest.mark.flow("retry_flow.py")
def test_retry_then_success(workspace: Workspace) -> None:
    from metaflow import Run

    out = workspace.compile()
    text = out.read_text()
    assert "RetryPolicy(max_retries=2)" in text  # no delay: user did not set minutes
    assert '"dagster/op_execution_timeout": "120"' in text
    workspace.dagster_execute(out, "RetryFlow")
    run = Run(f"RetryFlow/{metaflow_run_id(workspace.last_dagster_run().run_id)}")
    assert run.successful
    task = run["process"].task
    assert task.data.attempt == 1 == task.current_attempt
    assert task.data.env == ("hello", "world")
    assert task.data.result == 2


@pytest.mark.flow("catch_flow.py")
def test_catch_after_retries(workspace: Workspace) -> None:
    from metaflow import Run

    out = workspace.compile()
    # 1 user retry + @catch's NUM_FALLBACK_RETRIES (3), as Metaflow's other schedulers compute it
    assert "RetryPolicy(max_retries=4)" in out.read_text()
    workspace.dagster_execute(out, "CatchFlow")
    run = Run(f"CatchFlow/{metaflow_run_id(workspace.last_dagster_run().run_id)}")
    assert run.successful and run["end"].task.data.caught is True


@pytest.mark.flow("failing_flow.py")
def test_failure_names_step_and_shows_stderr(workspace: Workspace) -> None:
    out = workspace.compile()
    res = workspace.dagster_execute(out, "FailingFlow", check=False)
    assert res.returncode != 0
    run = workspace.last_dagster_run()
    failures = [
        e.dagster_event for e in workspace.dagster_events(run.run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
    ]
    assert failures, res.stdout[-2000:]
    msg = failures[0].step_failure_data.user_failure_data.description
    assert "'explode'" in msg and "boom-7f3a" in msg and "about to fail" in msg
    # the user's exception comes first, with the user's frames only, before the stderr tail
    lines = msg.splitlines()
    assert lines[1] == "builtins.ValueError: boom-7f3a", lines[:3]
    assert lines[2] == "Traceback (user code):" and "failing_flow.py" in lines[3]
    assert not any("metaflow/cli.py" in ln for ln in lines[: lines.index("Last lines of stderr:")])


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.flow("sleepy_flow.py")
def test_timeout_kills_process_group(workspace: Workspace) -> None:
    out = workspace.compile()
    assert '"dagster/op_execution_timeout": "4"' in out.read_text()
    cfg = f"ops:\n  SleepyFlow_steps:\n    ops:\n      op_start:\n        config:\n          marker-dir: '{workspace.dir}'\n"
    t0 = time.monotonic()
    res = workspace.dagster_execute(out, "SleepyFlow", cfg, check=False)
    elapsed = time.monotonic() - t0
    assert res.returncode != 0
    assert elapsed < 60
    pids = [int(p) for p in (workspace.dir / "pids").read_text().split()]
    assert not any(_alive(p) for p in pids), "step or grandchild survived the timeout"
    run = workspace.last_dagster_run()
    msgs = [e.dagster_event.step_failure_data.user_failure_data.description
            for e in workspace.dagster_events(run.run_id)
            if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"]
    assert any("timed out after 4s" in m for m in msgs)
    # recorded exactly as natively: Metaflow's TimeoutException, attempt finished and not ok
    from metaflow import Task

    task = Task(f"SleepyFlow/{metaflow_run_id(run.run_id)}/nap/nap", _namespace_check=False)
    assert task.exception is not None and "TimeoutException" in repr(task.exception.type)
    assert task.finished_at is not None and not task.successful
    assert task.metadata_dict.get("attempt_ok") == "False"
    assert "timed out" in task.stderr.lower()


@pytest.mark.parametrize("fork", ["1", "0"], ids=["zygote", "subprocess"])
@pytest.mark.flow("leaver_flow.py")
def test_a_daemon_a_successful_step_leaves_is_stopped_with_the_step(
    workspace: Workspace, fork: str
) -> None:
    """A grandchild that left the step's session (found by the step's token in its
    environment, or by a look at the step's tree while the step still runs) does not
    outlive the step, forked from the zygote or a plain subprocess; the run still
    succeeds."""
    out = workspace.compile()
    cfg = f"ops:\n  LeaverFlow_steps:\n    ops:\n      op_start:\n        config:\n          marker-dir: '{workspace.dir}'\n"
    workspace.dagster_execute(out, "LeaverFlow", cfg, DAGSTER_METAFLOW_FORK=fork)
    assert workspace.last_dagster_run().status.value == "SUCCESS"
    (pid,) = [int(p) for p in (workspace.dir / "pids").read_text().split()]
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "the step's escaped grandchild outlived it"


@pytest.mark.flow("sleepy_flow.py")
def test_interrupt_stops_step_tree_and_logs_stream_live(workspace: Workspace) -> None:
    import os
    import signal

    # no @timeout for this test: strip it so only the interruption can stop the step
    workspace.flow.write_text(workspace.flow.read_text().replace("@timeout(seconds=4)", ""))
    out = workspace.compile()
    cfg = workspace.dir / "cfg.yaml"
    cfg.write_text(f"ops:\n  SleepyFlow_steps:\n    ops:\n      op_start:\n        config:\n          marker-dir: '{workspace.dir}'\n")
    env = dict(os.environ, DAGSTER_HOME=str(workspace.dagster_home))
    proc = subprocess.Popen(
        [str(BIN / "dagster"), "job", "execute", "-f", str(out), "-j", "SleepyFlow", "-c", str(cfg)],
        cwd=workspace.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        pid_file = workspace.dir / "pids"
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline, "step never started"
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:] if proc.stdout else ""
            time.sleep(0.2)
        pids = [int(p) for p in pid_file.read_text().split()]
        # live logs: the marker is in the step's compute log while the step still runs
        logs_root = workspace.dagster_home / "storage"
        found = False
        while time.monotonic() < deadline and not found:
            found = any("nap-started" in p.read_text(errors="ignore") for p in logs_root.rglob("*.out"))
            time.sleep(0.2)
        assert found, "step output did not reach the compute log while running"
        assert all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "orphaned step processes after interruption"


@pytest.mark.flow("pypi_flow.py")
def test_pypi_step_without_micromamba_fails_with_metaflows_one_line(workspace: Workspace) -> None:
    """@pypi/@conda steps are launched as `flow.py run` launches them (the decorator's runtime
    hooks create the environment with micromamba and run the task in it). Where micromamba
    is missing and cannot be installed, the step fails with Metaflow's own line."""
    env = {
        "METAFLOW_HOME": str(workspace.dir / "mfhome"),
        "METAFLOW_PATH_TO_MICROMAMBA": str(workspace.dir / "no" / "micromamba"),
        # Metaflow downloads micromamba when it finds none: make that fail, network or not
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    native = workspace.metaflow("--environment=pypi", "run", check=False, **env)
    assert native.returncode != 0
    metaflow_line = next(
        ln.strip().rstrip(":") for ln in native.stderr.splitlines() if "Micromamba installation" in ln
    )

    workspace.metaflow("--environment=pypi", "dagster", "create", "out.py", **env)
    res = workspace.dagster_execute(workspace.dir / "out.py", "PypiFlow", check=False, **env)
    assert res.returncode != 0
    run = workspace.last_dagster_run()
    failures = [
        e.dagster_event for e in workspace.dagster_events(run.run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
    ]
    assert [short_key(f.step_key) for f in failures] == ["op_start"], res.stdout[-3000:]
    msg = failures[0].step_failure_data.user_failure_data.description
    assert msg == (
        f"step 'start' (@conda): Micromamba ran into an error while setting up environment: {metaflow_line}"
        " (micromamba is not installed here: install it or set METAFLOW_PATH_TO_MICROMAMBA)"
    )
