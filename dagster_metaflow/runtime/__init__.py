"""Runtime helpers imported by generated definitions files.

Attributes are resolved lazily so that light submodules (the zygote server in particular,
which must not import Dagster) can be imported on their own.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MetaflowFlow": ".flow",
    "metaflow_run_id": ".ids",
    "task_id_for": ".ids",
    "ThreadedExecutor": ".executor",
    "metaflow_executor": ".executor",
    "metaflow_io_manager": ".io",
    "metaflow_shared_io_manager": ".io",
    "executor_with_defaults": ".engines",
    "with_metaflow_run_end": ".engines",
    "StepControl": ".supervise",
    "Trigger": ".sensors",
    "evaluate_triggers": ".sensors",
    "publish_event": ".sensors",
    "run_supervised": ".supervise",
    "Notifications": ".notify",
    "notify_from_sensor": ".notify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
