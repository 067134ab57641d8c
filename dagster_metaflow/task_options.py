"""The options of a Metaflow task, in one frozen record each, shared by every layer.

A leaf module (no imports of the package, no Dagster; Metaflow's list encoding is imported
only when a command line is written or read), so the compiler, the op runtime, the step
command and `dagster launch-step` all read the same field names:

- `StepOptions`: what the deployment fixes for every task of one step. The compiler derives it
  from the step's decorators and writes it into the op's call; the op runtime receives it back
  as keyword arguments of the same names.
- `TaskOptions`: one attempt of one task, what `flow.py step` (or `flow.py dagster
  launch-step`) is started with and what `metaflow.runtime.Task` is made from. Its command
  line is written (`cli_args`) and read back (`from_cli`, with the click options
  `runtime.task_cli.task_options_cli` makes from `CLI_OPTIONS`) from one table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class StepOptions:
    """Per-step task options baked into the generated file (field order = the op call's)."""

    max_user_code_retries: int = 0
    extra_env: Mapping[str, str] = field(default_factory=dict)  # @environment
    timeout: int | None = None  # @timeout's deadline in seconds, enforced by the runtime
    launcher: str | None = None  # @kubernetes/@batch/@conda/@pypi: launched by its hooks
    ubf_context: str | None = None  # "ubf_control" for a @parallel step's control task
    decorator_specs: tuple[str, ...] = ()  # --with specs given to `create`

    def task(
        self, step: str, run_id: str, task_id: str, input_paths: Iterable[str], **more: Any
    ) -> TaskOptions:
        """The options of one task of this step (`more`: the other TaskOptions fields)."""
        return TaskOptions(
            step=step,
            run_id=run_id,
            task_id=task_id,
            input_paths=tuple(input_paths),
            max_user_code_retries=self.max_user_code_retries,
            ubf_context=self.ubf_context,
            launcher=self.launcher,
            decorator_specs=self.decorator_specs,
            **more,
        )


@dataclass(frozen=True)
class CliOption:
    """How one TaskOptions field is written on the task's command line."""

    field: str
    flag: str
    type: type = str
    required: bool = False
    multiple: bool = False  # the flag once per item
    joined: bool = False  # `--flag=value`, one argument
    help: str | None = None


# The task's options after the step name, in the order its command line lists them
CLI_OPTIONS = (
    CliOption("run_id", "--run-id", required=True),
    CliOption("task_id", "--task-id", required=True),
    CliOption("retry_count", "--retry-count", int),
    CliOption("max_user_code_retries", "--max-user-code-retries", int),
    CliOption(
        "input_paths",
        "--input-paths",
        required=True,
        help="Compressed, as `flow.py step` takes them.",
    ),
    CliOption("clone_run_id", "--clone-run-id"),
    CliOption("split_index", "--split-index", int),
    CliOption("ubf_context", "--ubf-context"),
    CliOption("num_parallel", "--num-parallel", int),
    CliOption("tags", "--tag", multiple=True),
    CliOption("namespace", "--namespace", joined=True),
    CliOption(
        "launcher",
        "--launcher",
        joined=True,
        help="The decorator that launches the task (for messages).",
    ),
    CliOption("package_url", "--package-url", joined=True),
    CliOption("package_sha", "--package-sha", joined=True),
    CliOption("package_metadata", "--package-metadata", joined=True),
)


@dataclass(frozen=True)
class TaskOptions:
    """One attempt of one task: what identifies it and how its command is made."""

    step: str
    run_id: str
    task_id: str
    input_paths: tuple[str, ...]
    retry_count: int = 0
    max_user_code_retries: int = 0
    split_index: int | None = None
    ubf_context: str | None = None
    tags: tuple[str, ...] = ()
    clone_run_id: str | None = None
    num_parallel: int | None = None  # a local @parallel control task
    namespace: str | None = None
    launcher: str | None = None
    decorator_specs: tuple[str, ...] = ()  # `--with` specs (top-level options, not in cli_args)
    package_url: str | None = None  # the deployment's code package (launched tasks)
    package_sha: str | None = None
    package_metadata: str | None = None

    @property
    def pathspec(self) -> str:
        return f"{self.run_id}/{self.step}/{self.task_id}"

    def with_package(self, package: Mapping[str, str] | None) -> TaskOptions:
        """These options with the code package a launched task runs (`create` saved it)."""
        if not package:
            return self
        return replace(
            self,
            package_url=package["url"],
            package_sha=package["sha"],
            package_metadata=package.get("metadata", ""),
        )

    def cli_args(self) -> list[str]:
        """The task's subcommand and its options: `step ...`, or with a launcher `dagster
        launch-step ...` (which builds the task's command with Metaflow's runtime hooks)."""
        from metaflow.util import compress_list

        argv = ["dagster", "launch-step", self.step] if self.launcher else ["step", self.step]
        for opt in CLI_OPTIONS:
            value = getattr(self, opt.field)
            if value is None:
                continue
            if opt.field == "input_paths":
                value = compress_list(list(value))
            for item in value if opt.multiple else [value]:
                argv += [f"{opt.flag}={item}"] if opt.joined else [opt.flag, str(item)]
            if opt.field == "num_parallel":
                argv += ["--split-index", "0"]  # what @parallel's runtime_step_cli adds locally
        return argv

    @classmethod
    def from_cli(cls, step: str, **values: Any) -> TaskOptions:
        """The options `cli_args` wrote, as the click options of `CLI_OPTIONS` parse them."""
        from metaflow.util import decompress_list

        values["input_paths"] = tuple(decompress_list(values["input_paths"]))
        values["tags"] = tuple(values.get("tags") or ())
        return cls(step=step, **values)
