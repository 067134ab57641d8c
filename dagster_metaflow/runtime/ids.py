"""The ids every part of the runtime agrees on: Metaflow run and task ids, where a task id
places its task (foreach index path, unbounded-foreach control), and not-taken markers.

No Dagster, no Metaflow: functions of strings (and of $DAGSTER_METAFLOW_UI_URL, for a run's
page), shared by the ops, resume, notifications and the CLI.
"""

from __future__ import annotations

import os
from typing import Any

from .. import naming

PARAMS_STEP = "_parameters"
PARAMS_TASK_ID = "t-params"
# Inside a foreach (and at top level where it decides whether a top-level foreach runs: the
# foreach op then fans out one marker child), a switch yields every output: the branch not
# taken gets "~<pathspec>", a marker that keeps the task's place (run/step/task id, hence
# its foreach index path), and every op on that branch passes a marker on without running a
# Metaflow task.
NOT_TAKEN = "~"
# the metadata of an output that carries a marker (`not_taken_metadata`): the UI says why
# the op ran no task, and `trigger --wait`'s progress line counts no task for the op
NOT_TAKEN_KEY, NOT_TAKEN_VALUE = "branch", "not taken"
# output metadata of an op that runs more than one Metaflow task, the tasks it ran: a chunk
# op's output and a control task's (@parallel, unbounded foreach: the control task and the
# tasks it started) say `tasks`, a loop's exit `iterations` (an op has one of the two)
TASKS_KEY = "tasks"
ITERATIONS_KEY = "iterations"

task_id_for = naming.task_id_for


def metaflow_run_id(dagster_run_id: str) -> str:
    """Deterministic Metaflow run id for a Dagster run: every op and retry agrees on it."""
    return "dagster-" + dagster_run_id.replace("-", "")[:12]


UI_URL_VAR = "DAGSTER_METAFLOW_UI_URL"  # where the instance's Dagster UI is served


def run_page_url(dagster_run_id: str) -> str | None:
    """The run's page in the Dagster UI at $DAGSTER_METAFLOW_UI_URL; None when it is not set
    (as Argo's `argo_ui` without its UI URL): a guessed host and port may point nowhere."""
    base = os.environ.get(UI_URL_VAR, "").strip().rstrip("/")
    return f"{base}/runs/{dagster_run_id}" if base else None


def params_pathspec(run_id: str) -> str:
    """The `_parameters` task of a run (`flow.py init` persists the run's parameters there)."""
    return f"{run_id}/{PARAMS_STEP}/{PARAMS_TASK_ID}"


def not_taken(pathspec: str) -> str:
    return NOT_TAKEN + pathspec


def not_taken_metadata() -> dict[str, Any]:
    """The metadata of an output that carries a not-taken marker."""
    return {NOT_TAKEN_KEY: NOT_TAKEN_VALUE}


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


def op_of_step_key(step_key: str) -> str:
    """The op name of a Dagster step key: `op_x`, `op_x[3]`, or, inside a flow's graph-backed
    asset, `Graph.op_x[3]` (op and graph names never contain a dot)."""
    return step_key.split("[", 1)[0].rsplit(".", 1)[-1]


def op_config(start_op: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run config giving the start op `config`; `start_op` is `op_start`, or `Graph.op_start`
    for the op inside a flow's graph-backed asset (the deployment record says which)."""
    *graphs, op = start_op.split(".")
    node: dict[str, Any] = {op: {"config": config}}
    for graph in reversed(graphs):
        node = {graph: {"ops": node}}
    return {"ops": node}


def start_op_config(run_config: Any) -> dict[str, Any]:
    """The start op's config in a run config, at whatever depth `op_config` put it."""
    ops = (run_config or {}).get("ops") or {}
    while ops:
        for name, value in ops.items():
            if name == "op_start" or name.endswith("start"):
                if isinstance(value, dict) and "config" in value:
                    return value.get("config") or {}
        inner = [v.get("ops") for v in ops.values() if isinstance(v, dict) and v.get("ops")]
        ops = inner[0] if inner else {}
    return {}


def op_nodes(graph: Any) -> dict[str, Any]:
    """Op node name -> op definition, inside the flow's graph-backed asset too. A node's name
    is `op_<step>` (what step keys hold); its definition's name is unique in the repository."""
    out: dict[str, Any] = {}
    for node in graph.nodes:
        definition = node.definition
        if hasattr(definition, "nodes"):  # a graph
            out.update(op_nodes(definition))
        else:
            out[node.name] = definition
    return out
