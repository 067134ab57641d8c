"""Resume and Dagster re-execution, with Metaflow's clone semantics.

Both start a NEW Metaflow run (`dagster-<12 hex of the new Dagster run id>`); the origin run is
only read. A task that is reused is *cloned* into the new run with Metaflow's own
`flow.py step <step> --clone-only <origin task>` (artifacts copied, `origin-run-id` and
`origin-task-id` recorded, never executed again), exactly as `flow.py resume` does.

- `dagster resume` / `DeployedFlow.resume`: a full run of the job tagged with the origin run
  (`dagster-metaflow/origin-run-id`) and the steps to run again (`--step-to-rerun` and
  everything after it). Each op clones its task when the origin's task with the same id
  succeeded and its step is not to be run again; otherwise it runs the step.
- Dagster re-execution (UI "from failure", "selected", "all"; run retries): the new Dagster
  run reuses the parent run's outputs for the ops it does not execute. Before any op runs,
  the new Metaflow run is prepared once: `_parameters` persisted with the run's parameters,
  and every task that succeeded in the parent's Metaflow run and that no executed op will
  run again is cloned. Executed ops always run their step (that is what was asked for);
  pathspecs they receive from the parent are read in the new run (`in_run`). prepare.py
  prepares the run with what this module says (`origin_of`, `executed_tasks`).

Task ids encode the task's place in the graph (foreach index path, loop iteration), so the
origin task of a task is the one with the same step and task id.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import naming
from .hostfiles import LOCK_SUFFIX, host_dir, locked, sweep_in_background
from .ids import metaflow_run_id, op_nodes, op_of_step_key

if TYPE_CHECKING:
    from dagster import OpExecutionContext

TAG_ORIGIN_RUN = "dagster-metaflow/origin-run-id"
TAG_STEPS_TO_RERUN = "dagster-metaflow/steps-to-rerun"


@dataclass(frozen=True)
class Origin:
    """Where the tasks of this run may be cloned from."""

    run_id: str  # Metaflow run id of the origin
    reexecution: bool  # Dagster re-execution (clones prepared up front) vs resume
    steps_to_rerun: frozenset[str] = frozenset()

    def may_clone(self, step: str) -> bool:
        """Resume: an executed op clones unless its step is to run again. Re-execution:
        executed ops were asked to run, so they never clone."""
        return not self.reexecution and step not in self.steps_to_rerun


def origin_of(context: OpExecutionContext) -> Origin | None:
    """The run this Dagster run reuses tasks from: its parent (re-execution) or the origin
    run its tags name (resume); None for a fresh run."""
    run = context.run
    if run.parent_run_id:
        return Origin(run_id=metaflow_run_id(run.parent_run_id), reexecution=True)
    origin = run.tags.get(TAG_ORIGIN_RUN)
    if origin:
        steps = frozenset(json.loads(run.tags.get(TAG_STEPS_TO_RERUN) or "[]"))
        return Origin(run_id=origin, reexecution=False, steps_to_rerun=steps)
    return None


def in_run(pathspec: str, run_id: str) -> str:
    """The same task in run `run_id` (inputs reused from a parent run were cloned here)."""
    parts = pathspec.split("/")
    if len(parts) == 3 and parts[0] != run_id and not pathspec.startswith("~"):
        return f"{run_id}/{parts[1]}/{parts[2]}"
    return pathspec


class OncePerRun:
    """Run a preparation once per Dagster run across the threads and processes of a run
    worker host (a lock file per run under the host's temp directory serialises processes;
    files of runs untouched for days are swept, `hostfiles`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: set[str] = set()

    def once(self, key: str, fn: Callable[[], None]) -> None:
        if key in self._done:
            return
        with self._lock:
            if key in self._done:
                return
            with locked(os.path.join(host_dir("runs"), f"{key}{LOCK_SUFFIX}")) as fd:
                assert fd is not None  # a waiting lock is always taken
                if os.pread(fd, 16, 0).strip() == b"done":
                    os.utime(fd)  # used: a sweep keeps it while the run goes on
                else:
                    fn()
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, b"done", 0)
            self._done.add(key)
        sweep_in_background("runs")


def executed_tasks(
    context: OpExecutionContext,
) -> tuple[set[str], set[tuple[str, tuple[int, ...]]]]:
    """(steps whose every task runs again, (step, index path) of single tasks that run again)
    for the ops this Dagster run executes."""
    steps_of = _op_steps(context)
    keys = context.run.step_keys_to_execute
    if keys is None:
        return set(steps_of.values()), set()
    return tasks_of_step_keys(keys, steps_of)


def tasks_of_step_keys(
    keys: Iterable[str], steps_of: Mapping[str, str]
) -> tuple[set[str], set[tuple[str, tuple[int, ...]]]]:
    """What `executed_tasks` says for these step keys (`steps_of`: op name -> its step).

    An unresolved key (`op_post[?]`) runs every task of its step that the new run maps. When
    the step's tasks have two op families (a chunkable body: `op_post` per task, `chunk_post`
    per chunk), that holds only if every family's key is unresolved (the foreach op, or a
    nested one's fanout op, runs again, and with it everything below). One family alone
    unresolved is the path the parent did not take: Dagster lists a step that never ran as
    missing whatever failed (in the body, the join or elsewhere), and it maps to nothing in
    the new run, so the step's tasks are cloned as any other's."""
    whole: set[str] = set()
    single: set[tuple[str, tuple[int, ...]]] = set()
    unresolved: dict[str, set[str]] = {}  # step -> its ops with an unresolved key
    for key in keys:
        _, _, mapping = key.partition("[")
        op = op_of_step_key(key)
        step = steps_of.get(op)
        if step is None:
            continue
        mapping = mapping.rstrip("]")
        chunk = naming.chunk_tasks(mapping)
        if not mapping:  # an op outside any foreach reruns its only task
            whole.add(step)
        elif "?" in mapping:
            unresolved.setdefault(step, set()).add(op)
        elif chunk is not None:  # a chunk op: every task of its chunk
            parent, last = chunk
            single.update((step, (*parent, i)) for i in last)
        else:
            single.add((step, naming.indices_from_mapping_key(mapping)))
    families: dict[str, set[str]] = {}  # step -> every op that runs its tasks
    for op, step in steps_of.items():
        families.setdefault(step, set()).add(op)
    whole.update(s for s, ops in unresolved.items() if families[s] <= ops)
    return whole, single


def _op_steps(context: OpExecutionContext) -> dict[str, str]:
    out = {}
    for name, op in op_nodes(context.job_def.graph).items():  # also inside the graph asset
        step = op.tags.get("metaflow/step")
        if step:
            out[name] = step
    return out
