"""Flows nobody here wrote: Configs, @project branches, with the zygote on and off."""

from __future__ import annotations

import pytest
from conftest import Workspace

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("fork", ["1", "0"], ids=["zygote", "subprocess"])
@pytest.mark.flow("config_flow.py")
def test_configs_fixed_at_create_reach_every_step(workspace: Workspace, fork: str) -> None:
    from metaflow import Run

    (workspace.dir / "extra.json").write_text('{"value": "from-file"}')
    override = '{"team": "blue", "size": 2}'
    top = ("--config-value", "settings", override, "--branch", "exp")
    workspace.metaflow(*top, "dagster", "create", "out_dagster.py")
    # the config file changes after create: the deployment keeps what create resolved
    (workspace.dir / "extra.json").write_text('{"value": "changed-later"}')
    workspace.metaflow(
        *top, "dagster", "trigger", "--note", "n", "--wait", "--run-id-file", "rid",
        DAGSTER_METAFLOW_FORK=fork,
    )
    run = Run(f"ConfigFlow/{(workspace.dir / 'rid').read_text()}", _namespace_check=False)
    assert run.successful
    start = run["start"].task.data
    assert (start.size, start.extra_value, start.env_size) == (2, "from-file", "2")
    assert run["join"].task.data.seen == [("blue", "from-file")]
    assert run["end"].task.data.branch == "test.exp"
    assert "project:blue" in run.tags and "project_branch:test.exp" in run.tags


@pytest.mark.flow("sleepy_flow.py")
def test_zygote_steps_show_their_command_and_die_with_the_run_worker(workspace: Workspace) -> None:
    """`ps` shows `python flow.py step nap ...`; kill -9 of the run worker stops the step."""
    import os
    import signal
    import time

    import psutil
    from dagster import DagsterInstance

    workspace.flow.write_text(workspace.flow.read_text().replace("@timeout(seconds=4)", ""))
    workspace.compile()
    workspace.metaflow("dagster", "trigger", "--marker-dir", str(workspace.dir), "--run-id-file", "rid")
    pid_file = workspace.dir / "pids"
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.5)
    step_pid, child_pid = (int(p) for p in pid_file.read_text().split())
    cmdline = " ".join(psutil.Process(step_pid).cmdline())
    assert "sleepy_flow.py" in cmdline and " step nap " in cmdline, cmdline

    with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
        run = instance.get_runs(limit=1)[0]
    worker = int(run.tags["dagster-metaflow/worker-pid"])
    os.kill(worker, signal.SIGKILL)

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    t0 = time.monotonic()
    while (alive(step_pid) or alive(child_pid)) and time.monotonic() - t0 < 30:
        time.sleep(0.5)
    assert not alive(step_pid) and not alive(child_pid), "the step outlived its run worker"
