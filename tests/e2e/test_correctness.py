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
