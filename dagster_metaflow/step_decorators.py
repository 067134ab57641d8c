"""Tables of Metaflow step decorators: which the compiler handles, refuses or launches with.

A leaf module (no imports of the package): the compiler reads it to accept or refuse a
flow, and the runtime reads it to know which tasks run remotely from the code package.
"""

from __future__ import annotations

from typing import Literal

# Metaflow's step decorators whose local-runtime hooks the compiler reproduces itself
# (retry/catch -> RetryPolicy and --max-user-code-retries, timeout -> enforced deadline,
# environment -> step environment, parallel -> control task, ...). Any other decorator is
# accepted when its behaviour lives in the task (step_init, task_pre_step, task_decorate,
# task_post_step, ...), which `flow.py step` runs unchanged.
SUPPORTED_STEP_DECORATORS = frozenset(
    {
        "retry",
        "catch",
        "timeout",
        "environment",
        "resources",
        "card",
        "secrets",
        "project",
        "parallel",
    }
)
# hooks only Metaflow's local runtime (`flow.py run`) calls: a decorator that needs them
# cannot work under another orchestrator unless it is handled above
RUNTIME_HOOKS = ("runtime_init", "runtime_task_created", "runtime_step_cli", "runtime_finished")
# Decorators that Metaflow attaches on its own; never user-visible, always fine.
INTERNAL_DECORATORS = frozenset({"dagster_internal"})
# Metaflow's step decorators that cannot run under dagster-metaflow, and why (one line each)
REFUSED_STEP_DECORATORS = {
    "argo_workflows_internal": "it belongs to Metaflow's Argo Workflows integration",
    "step_functions_internal": "it belongs to Metaflow's AWS Step Functions integration",
    "airflow_internal": "it belongs to Metaflow's Apache Airflow integration",
}
# Step decorators whose runtime hooks launch the task, as under `flow.py run`: the op runs
# Metaflow's own hooks (runtime_init, runtime_task_created, runtime_step_cli) for the task.
# @kubernetes/@batch turn `step` into `kubernetes step`/`batch step` (the task runs remotely
# from the code package); @conda/@pypi run it with the interpreter of the step's environment.
REMOTE_COMPUTE_DECORATORS = frozenset({"kubernetes", "batch"})
ENVIRONMENT_DECORATORS = frozenset({"conda", "pypi"})
LAUNCHER_DECORATORS = REMOTE_COMPUTE_DECORATORS | ENVIRONMENT_DECORATORS
# datastores a remote task can reach, per decorator (what their step_init accepts)
REMOTE_DATASTORES = {"kubernetes": ("s3", "azure", "gs"), "batch": ("s3",)}
Launcher = Literal["kubernetes", "batch", "conda", "pypi"]
