"""One TaskOptions record makes a task's command line and reads it back (`dagster
launch-step`), so the options are written once."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from metaflow._vendor import click

from dagster_metaflow.runtime.flow import MetaflowFlow
from dagster_metaflow.runtime.task_cli import task_options_cli
from dagster_metaflow.task_options import StepOptions, TaskOptions

TASK = TaskOptions(
    step="body",
    run_id="dagster-0123456789ab",
    task_id="body-2",
    input_paths=("dagster-0123456789ab/start/start",),
    retry_count=1,
    max_user_code_retries=2,
    split_index=2,
    tags=("a", "b:c"),
    clone_run_id="dagster-origin",
    namespace="user:me",
    decorator_specs=("resources:cpu=2",),
)


def test_the_step_command_is_metaflows_step_command() -> None:
    flow = MetaflowFlow(
        name="F", file="/nowhere/f.py", top_level_args=("--quiet",), datastore_root="/ds"
    )
    assert flow.step_argv(TASK) == [
        sys.executable, "/nowhere/f.py", "--quiet", "--datastore=local", "--datastore-root=/ds",
        "--with=resources:cpu=2", "--with=dagster_internal",
        "step", "body", "--run-id", "dagster-0123456789ab", "--task-id", "body-2",
        "--retry-count", "1", "--max-user-code-retries", "2",
        "--input-paths", "dagster-0123456789ab/start/start", "--clone-run-id", "dagster-origin",
        "--split-index", "2", "--tag", "a", "--tag", "b:c", "--namespace=user:me",
    ]  # fmt: skip
    control = replace(
        TASK, split_index=None, ubf_context="ubf_control", num_parallel=3, namespace=None
    )
    assert control.cli_args()[-10:] == [
        "--ubf-context", "ubf_control", "--num-parallel", "3", "--split-index", "0", "--tag", "a", "--tag", "b:c",
    ]  # fmt: skip


def test_launch_step_reads_back_what_the_op_wrote() -> None:
    package = {"url": "s3://b/p", "sha": "abc", "metadata": '{"x": 1}'}
    task = replace(TASK, launcher="kubernetes", input_paths=("R/a/a-0", "R/a/a-1")).with_package(
        package
    )
    argv = task.cli_args()
    assert argv[:3] == ["dagster", "launch-step", "body"]
    assert argv[-4:] == [
        "--launcher=kubernetes",
        "--package-url=s3://b/p",
        "--package-sha=abc",
        '--package-metadata={"x": 1}',
    ]
    got: list[TaskOptions] = []

    @click.command()
    @task_options_cli
    def launch_step(**options: Any) -> None:
        got.append(TaskOptions.from_cli(**options))

    launch_step.main(argv[2:], standalone_mode=False)
    assert got == [
        replace(task, decorator_specs=())
    ]  # --with specs are Metaflow's top-level options


def test_a_step_options_task_carries_the_steps_options() -> None:
    options = StepOptions(max_user_code_retries=3, launcher="conda", decorator_specs=("conda",))
    task = options.task("s", "R", "s", ["R/start/start"], retry_count=1)
    assert (task.max_user_code_retries, task.launcher, task.decorator_specs) == (
        3,
        "conda",
        ("conda",),
    )
    assert task.input_paths == ("R/start/start",) and task.pathspec == "R/s/s"
