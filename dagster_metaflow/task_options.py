"""The options of a Metaflow task, in one frozen record each, shared by every layer.

A leaf module (no imports of the package, no Dagster, no Metaflow), so the compiler, the op
runtime, the step command and `dagster launch-step` all read the same field names:

- `StepOptions`: what the deployment fixes for every task of one step. The compiler derives it
  from the step's decorators and writes it into the op's call; the op runtime receives it back
  as keyword arguments of the same names.
- `TaskOptions`: one attempt of one task, what `flow.py step` (or `flow.py dagster
  launch-step`) is started with and what `metaflow.runtime.Task` is made from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepOptions:
    """Per-step task options baked into the generated file (field order = the op call's)."""

    max_user_code_retries: int = 0
    extra_env: Mapping[str, str] = field(default_factory=dict)  # @environment
    timeout: int | None = None  # @timeout's deadline in seconds, enforced by the runtime
    launcher: str | None = None  # @kubernetes/@batch/@conda/@pypi: launched by its hooks
    ubf_context: str | None = None  # "ubf_control" for a @parallel step's control task
    decorator_specs: tuple[str, ...] = ()  # --with specs given to `create`


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
    decorator_specs: tuple[str, ...] = ()
    package_url: str | None = None  # the deployment's code package (launched tasks)
    package_sha: str | None = None
    package_metadata: str | None = None

    @property
    def pathspec(self) -> str:
        return f"{self.run_id}/{self.step}/{self.task_id}"
