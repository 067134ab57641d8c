"""The ids every part of the runtime agrees on: Metaflow run and task ids, where a task id
places its task (foreach index path, unbounded-foreach control), and not-taken markers.

No Dagster, no Metaflow: pure functions of strings, shared by the ops, resume and the CLI.
"""

from __future__ import annotations

from typing import Any

from .. import naming

PARAMS_STEP = "_parameters"
PARAMS_TASK_ID = "t-params"
# Inside a foreach, a switch yields every output: the branch not taken gets "~<pathspec>",
# a marker that keeps the task's place (run/step/task id, hence its foreach index path), and
# every op on that branch passes a marker on without running a Metaflow task.
NOT_TAKEN = "~"

task_id_for = naming.task_id_for


def metaflow_run_id(dagster_run_id: str) -> str:
    """Deterministic Metaflow run id for a Dagster run: every op and retry agrees on it."""
    return "dagster-" + dagster_run_id.replace("-", "")[:12]


def params_pathspec(run_id: str) -> str:
    """The `_parameters` task of a run (`flow.py init` persists the run's parameters there)."""
    return f"{run_id}/{PARAMS_STEP}/{PARAMS_TASK_ID}"


def not_taken(pathspec: str) -> str:
    return NOT_TAKEN + pathspec


def taken(value: str) -> bool:
    return bool(value) and not value.startswith(NOT_TAKEN)


def is_ubf_control(pathspec: str) -> bool:
    """Whether a task id made by `task_id_for` is an unbounded foreach's control task."""
    step_and_place = pathspec.rsplit("/", 1)[-1].rsplit("-", 1)
    return len(step_and_place) == 2 and step_and_place[1] == naming.UBF


def indices_of(pathspec: str) -> tuple[int, ...]:
    """Foreach index path encoded in a task id made by `task_id_for`."""
    out = []
    for part in pathspec.rsplit("/", 1)[-1].split("-")[1:]:  # [0] is the step
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def path_sort_key(pathspec: str) -> tuple[Any, ...]:
    """Tasks in graph order: by step, then foreach index path."""
    step = pathspec.split("/")[1]
    return (step, indices_of(pathspec), pathspec)
