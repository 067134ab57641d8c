"""Every private Dagster API dagster-metaflow uses, behind one version check.

Dagster has no public API for what these do, and its `dagster._*` modules change between
minor releases. Importing them all here, once, means an untested Dagster fails with one line
naming the installed and the supported versions instead of an error deep in a run.
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
  `serializable_error_info_from_exc_info` (a crashed step thread as an engine error);
- `runs.py` creates a run of a deployed job as `dagster job launch` does (`create_run`,
  the workspace helpers of `dagster._cli.workspace.cli_target`), starts its worker as the
  DefaultRunLauncher does (`ExecuteRunArgs`), and recognises runs started by a code server
  (`GRPC_INFO_TAG`);
- `run_launcher.py` is a run launcher (`LaunchRunContext`, `ResumeRunContext`,
  `CheckRunHealthResult`, `WorkerStatus`) that starts workers with `ExecuteRunArgs` /
  `ResumeRunArgs`, as Dagster's own launchers do;
- `deployments.py` stops a deleted deployment's schedules and sensors (`InstigatorStatus`)
  and lists deployment records by key prefix in the SQL run storages' key-value table
  (`SqlRunStorage`, `KeyValueStoreTable`, `db_select`: the storage API reads keys only by name);
- `automation.py` refuses at compile time a cron string Dagster would refuse at load
  (`is_valid_cron_string`).
"""

from __future__ import annotations

import os
import re

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

try:
    from dagster._cli.api import _execute_run_command_body as execute_run_body
    from dagster._cli.api import _resume_run_command_body as resume_run_body
    from dagster._cli.job import _create_run as create_run
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
    from dagster._core.scheduler.instigation import InstigatorStatus
    from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
    from dagster._core.storage.runs.schema import KeyValueStoreTable
    from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
    from dagster._core.storage.sqlalchemy_compat import db_select
    from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
    from dagster._utils.error import serializable_error_info_from_exc_info
    from dagster._utils.interrupts import capture_interrupts
    from dagster._utils.schedules import is_valid_cron_string
except ImportError as exc:
    raise UnsupportedDagsterVersion(unsupported_message(DAGSTER_VERSION, f" ({exc})")) from None

__all__ = [
    "DAGSTER_MAX_EXCLUSIVE",
    "DAGSTER_MIN",
    "DAGSTER_VERSION",
    "GRPC_INFO_TAG",
    "execute_run_body",
    "resume_run_body",
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
    "serializable_error_info_from_exc_info",
    "supported_range",
    "trigger_hook",
    "unsupported_message",
]
