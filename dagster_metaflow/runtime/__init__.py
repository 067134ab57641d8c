"""Runtime helpers imported by generated definitions files."""

from .executor import ThreadedExecutor, metaflow_executor
from .flow import MetaflowFlow, metaflow_run_id, task_id_for
from .supervise import StepControl, run_supervised

__all__ = [
    "MetaflowFlow",
    "StepControl",
    "ThreadedExecutor",
    "metaflow_executor",
    "metaflow_run_id",
    "run_supervised",
    "task_id_for",
]
