"""Every private Dagster API dagster-metaflow uses, behind one version check.

Dagster has no public API for what these do, and its `dagster._*` modules change between
minor releases. Naming them all here means an untested Dagster fails with one line naming
the installed and the supported versions instead of an error deep in a run: the version is
checked on import, each API is imported on first use (importing all of them costs ~0.6 s,
which the generated file and read-only commands do not need), and a unit test imports
every one (`check_imports`).
The range is what `tests/compat/run_compat.sh` passes (README, "Compatibility");
`DAGSTER_METAFLOW_SKIP_VERSION_CHECK=1` skips the range check (the imports still must work).

Why each is needed:
- the thread executor (`runtime/executor.py`) drives the execution plan as Dagster's own
  executors do: `ExecutionPlan` (and its active execution), the plan/orchestration/step
  contexts, `PlanExecutionContextManager` and `ExecuteRunWithPlanIterable` (run the plan in
  the run worker), `dagster_event_sequence_for_step` (one step's body, with retries and
  events), `_trigger_hook` (op hooks after a step), `InstanceConcurrencyContext` (concurrency
  pools), `RetryMode`/`get_retries_config` (the executor's `retries` config),
  `EngineEventData`, `ComputeIOType`/`CapturedLogContext` (per-step compute logs) and
  `serializable_error_info_from_exc_info` (a crashed step thread as an engine error),
  `known_state_for_step` (a step's known state without every output of the run),
  `LOG_RECORD_EVENT_ATTR` (to keep unread IO bookkeeping events out of the event log);
- `runs.py` creates a run of a deployed job as `dagster job launch` does (`create_run`,
  the workspace helpers of `dagster._cli.workspace.cli_target`), starts its worker as the
  DefaultRunLauncher does (`ExecuteRunArgs`), and recognises runs started by a code server
  (`GRPC_INFO_TAG`);
- `run_worker.py` runs what `dagster api execute_run` / `resume_run` run
  (`execute_run_body`, `resume_run_body`, `get_instance_for_cli`, `capture_interrupts`),
  in a worker `trigger` forked or one our run launcher started;
- `run_launcher.py` is a run launcher (`LaunchRunContext`, `ResumeRunContext`,
  `CheckRunHealthResult`, `WorkerStatus`) that starts workers with `ExecuteRunArgs` /
  `ResumeRunArgs`, as Dagster's own launchers do;
- `deployments.py` stops a deleted deployment's schedules and sensors (`InstigatorStatus`)
  and lists deployment records by key prefix in the SQL run storages' key-value table
  (`SqlRunStorage`, `KeyValueStoreTable`, `db_select`: the storage API reads keys only by name);
- `automation.py` refuses at compile time a cron string Dagster would refuse at load
  (`is_valid_cron_string`);
- `_dagster_sqlite` rebinds two internals of Dagster's SQLite storages in our own
  processes: the head of the schema migrations read once per process, and one kept
  connection per database in a run worker, through which a new run's event database is
  copied from a template (`_dagster_shards`: `SqliteEventLogStorage._initdb` builds the
  template, `path_for_shard` and `_initialized_dbs` place and mark the copy).
"""

from __future__ import annotations

import importlib
import os
import re
from typing import TYPE_CHECKING, Any

# tested range (README "Compatibility"); dagster-webserver follows dagster's version.
# 1.11.10: the first with PlanExecutionContext.step_dependency_config (the executor passes it
# to ExecutionPlan.start); 1.14: the next minor, untested.
DAGSTER_MIN = "1.11.10"
DAGSTER_MAX_EXCLUSIVE = "1.14"
SKIP_ENV = "DAGSTER_METAFLOW_SKIP_VERSION_CHECK"
_DEV_VERSION = "1!0+dev"  # a Dagster installed from a source checkout


class UnsupportedDagsterVersion(ImportError):
    """The installed Dagster is outside the tested range, or lacks a private API we use."""


def supported_range() -> str:
    return f">={DAGSTER_MIN},<{DAGSTER_MAX_EXCLUSIVE}"


def unsupported_message(found: str, detail: str = "") -> str:
    """The one line shown when Dagster does not fit: found, supported, how to fix."""
    rng = supported_range()
    return (
        f"dagster-metaflow supports dagster{rng}; found dagster {found}{detail}: "
        f"pip install 'dagster{rng}' 'dagster-webserver{rng}' "
        f"(or set {SKIP_ENV}=1 to try it anyway)"
    )


def _release(version: str) -> tuple[int, ...] | None:
    """(1, 13, 27) for "1.13.27"; a pre-release counts as its release (1.14.0rc1: 1.14.0).
    Parsed here: `packaging` is not among Dagster's requirements."""
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version.strip())
    if m is None:
        return None
    return tuple(int(part or 0) for part in m.groups())


def check_version(found: str) -> None:
    """Raise UnsupportedDagsterVersion unless `found` is in the tested range."""
    if found == _DEV_VERSION:
        return
    release = _release(found)
    low, high = _release(DAGSTER_MIN), _release(DAGSTER_MAX_EXCLUSIVE)
    assert low is not None and high is not None
    if release is None or not low <= release < high:
        raise UnsupportedDagsterVersion(unsupported_message(found))


from dagster import __version__ as DAGSTER_VERSION  # noqa: E402

if not os.environ.get(SKIP_ENV):
    check_version(DAGSTER_VERSION)

# name -> (module, attribute): imported on first use, so a process imports only what it
# needs (all of it costs ~0.6 s: run storage, alembic, the daemon); `check_imports` (a unit
# test) imports every one against the installed Dagster.
_LAZY: dict[str, tuple[str, str]] = {
    "CapturedLogContext": ("dagster._core.storage.compute_log_manager", "CapturedLogContext"),
    "CheckRunHealthResult": ("dagster._core.launcher", "CheckRunHealthResult"),
    "ComputeIOType": ("dagster._core.storage.compute_log_manager", "ComputeIOType"),
    "EngineEventData": ("dagster._core.events", "EngineEventData"),
    "ExecuteRunArgs": ("dagster._grpc.types", "ExecuteRunArgs"),
    "ExecuteRunWithPlanIterable": ("dagster._core.execution.api", "ExecuteRunWithPlanIterable"),
    "ExecutionPlan": ("dagster._core.execution.plan.plan", "ExecutionPlan"),
    "GRPC_INFO_TAG": ("dagster._core.launcher.default_run_launcher", "GRPC_INFO_TAG"),
    "InstanceConcurrencyContext": (
        "dagster._core.execution.plan.instance_concurrency_context",
        "InstanceConcurrencyContext",
    ),
    "InstigatorStatus": ("dagster._core.scheduler.instigation", "InstigatorStatus"),
    "LOG_RECORD_EVENT_ATTR": ("dagster._core.log_manager", "LOG_RECORD_EVENT_ATTR"),
    "KeyValueStoreTable": ("dagster._core.storage.runs.schema", "KeyValueStoreTable"),
    "LaunchRunContext": ("dagster._core.launcher", "LaunchRunContext"),
    "PlanExecutionContext": ("dagster._core.execution.context.system", "PlanExecutionContext"),
    "PlanExecutionContextManager": (
        "dagster._core.execution.context_creation_job",
        "PlanExecutionContextManager",
    ),
    "PlanOrchestrationContext": (
        "dagster._core.execution.context.system",
        "PlanOrchestrationContext",
    ),
    "ResumeRunArgs": ("dagster._grpc.types", "ResumeRunArgs"),
    "ResumeRunContext": ("dagster._core.launcher", "ResumeRunContext"),
    "RetryMode": ("dagster._core.execution.retries", "RetryMode"),
    "SqlRunStorage": ("dagster._core.storage.runs.sql_run_storage", "SqlRunStorage"),
    "WorkerStatus": ("dagster._core.launcher", "WorkerStatus"),
    "WorkspaceOpts": ("dagster._cli.workspace.cli_target", "WorkspaceOpts"),
    "capture_interrupts": ("dagster._utils.interrupts", "capture_interrupts"),
    "create_run": ("dagster._cli.job", "_create_run"),
    "dagster_event_sequence_for_step": (
        "dagster._core.execution.plan.execute_plan",
        "dagster_event_sequence_for_step",
    ),
    "db_select": ("dagster._core.storage.sqlalchemy_compat", "db_select"),
    "execute_run_body": ("dagster._cli.api", "_execute_run_command_body"),
    "resume_run_body": ("dagster._cli.api", "_resume_run_command_body"),
    "get_instance_for_cli": ("dagster._cli.utils", "get_instance_for_cli"),
    "get_code_location_from_workspace": (
        "dagster._cli.workspace.cli_target",
        "get_code_location_from_workspace",
    ),
    "get_remote_job_from_remote_repo": (
        "dagster._cli.workspace.cli_target",
        "get_remote_job_from_remote_repo",
    ),
    "get_remote_repository_from_code_location": (
        "dagster._cli.workspace.cli_target",
        "get_remote_repository_from_code_location",
    ),
    "get_retries_config": ("dagster._core.execution.retries", "get_retries_config"),
    "get_workspace_from_cli_opts": (
        "dagster._cli.workspace.cli_target",
        "get_workspace_from_cli_opts",
    ),
    "is_valid_cron_string": ("dagster._utils.schedules", "is_valid_cron_string"),
    "serializable_error_info_from_exc_info": (
        "dagster._utils.error",
        "serializable_error_info_from_exc_info",
    ),
    "trigger_hook": ("dagster._core.execution.plan.execute_plan", "_trigger_hook"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    try:
        value = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UnsupportedDagsterVersion(unsupported_message(DAGSTER_VERSION, f" ({exc})")) from None
    globals()[name] = value
    return value


def known_state_for_step(active: Any, step: Any) -> Any:
    """`ActiveExecution.get_known_state()` narrowed to what one step reads: its own retry
    attempts, the dynamic mappings, and whether ITS inputs' outputs are ready
    (`StepExecutionContext.can_load`). Dagster's own builds the state with every output of
    the run so far and type-checks each one, per step started: O(tasks) per task, which
    made a 50,000-wide foreach quadratic. Reads ActiveExecution's private fields (same in
    1.11.10 and 1.13)."""
    from dagster._core.execution.plan.state import KnownExecutionState

    produced = active._step_outputs
    ready = {
        handle
        for step_input in step.step_inputs
        for handle in step_input.get_step_output_handle_dependencies()
        if handle in produced
    }
    known = active._plan.known_state
    return KnownExecutionState(
        previous_retry_attempts=active._retry_state.snapshot_attempts(),
        dynamic_mappings=dict(active._completed_dynamic_outputs),
        ready_outputs=ready,
        step_output_versions=known.step_output_versions,
        parent_state=known.parent_state,
    )


def check_imports() -> None:
    """Import every private API used, as a whole-package check of the installed Dagster."""
    for name in _LAZY:
        __getattr__(name)


if TYPE_CHECKING:
    from dagster._cli.api import _execute_run_command_body as execute_run_body
    from dagster._cli.api import _resume_run_command_body as resume_run_body
    from dagster._cli.job import _create_run as create_run
    from dagster._cli.utils import get_instance_for_cli
    from dagster._cli.workspace.cli_target import (
        WorkspaceOpts,
        get_code_location_from_workspace,
        get_remote_job_from_remote_repo,
        get_remote_repository_from_code_location,
        get_workspace_from_cli_opts,
    )
    from dagster._core.events import EngineEventData
    from dagster._core.execution.api import ExecuteRunWithPlanIterable
    from dagster._core.execution.context.system import (
        PlanExecutionContext,
        PlanOrchestrationContext,
    )
    from dagster._core.execution.context_creation_job import PlanExecutionContextManager
    from dagster._core.execution.plan.execute_plan import (
        _trigger_hook as trigger_hook,
    )
    from dagster._core.execution.plan.execute_plan import (
        dagster_event_sequence_for_step,
    )
    from dagster._core.execution.plan.instance_concurrency_context import (
        InstanceConcurrencyContext,
    )
    from dagster._core.execution.plan.plan import ExecutionPlan
    from dagster._core.execution.retries import RetryMode, get_retries_config
    from dagster._core.launcher import (
        CheckRunHealthResult,
        LaunchRunContext,
        ResumeRunContext,
        WorkerStatus,
    )
    from dagster._core.launcher.default_run_launcher import GRPC_INFO_TAG
    from dagster._core.log_manager import LOG_RECORD_EVENT_ATTR
    from dagster._core.scheduler.instigation import InstigatorStatus
    from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
    from dagster._core.storage.runs.schema import KeyValueStoreTable
    from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
    from dagster._core.storage.sqlalchemy_compat import db_select
    from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
    from dagster._utils.error import serializable_error_info_from_exc_info
    from dagster._utils.interrupts import capture_interrupts
    from dagster._utils.schedules import is_valid_cron_string


__all__ = [
    "DAGSTER_MAX_EXCLUSIVE",
    "DAGSTER_MIN",
    "DAGSTER_VERSION",
    "GRPC_INFO_TAG",
    "LOG_RECORD_EVENT_ATTR",
    "execute_run_body",
    "resume_run_body",
    "get_instance_for_cli",
    "CapturedLogContext",
    "CheckRunHealthResult",
    "ComputeIOType",
    "EngineEventData",
    "ExecuteRunArgs",
    "ExecuteRunWithPlanIterable",
    "ExecutionPlan",
    "InstanceConcurrencyContext",
    "InstigatorStatus",
    "KeyValueStoreTable",
    "LaunchRunContext",
    "PlanExecutionContext",
    "PlanExecutionContextManager",
    "PlanOrchestrationContext",
    "ResumeRunArgs",
    "ResumeRunContext",
    "RetryMode",
    "SqlRunStorage",
    "UnsupportedDagsterVersion",
    "WorkerStatus",
    "WorkspaceOpts",
    "capture_interrupts",
    "check_imports",
    "check_version",
    "create_run",
    "dagster_event_sequence_for_step",
    "db_select",
    "get_code_location_from_workspace",
    "get_remote_job_from_remote_repo",
    "get_remote_repository_from_code_location",
    "get_retries_config",
    "get_workspace_from_cli_opts",
    "is_valid_cron_string",
    "known_state_for_step",
    "serializable_error_info_from_exc_info",
    "supported_range",
    "trigger_hook",
    "unsupported_message",
]
