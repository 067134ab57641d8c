"""The chunked fan-out: a wide foreach's tasks run in chunks, one op per chunk.

One Dagster op per task costs ~12 KB of event log and ~30 ms of the run worker's CPU per
task (docs/performance.md). Above the threshold (`DAGSTER_METAFLOW_CHUNK_ABOVE`, default
500 tasks) the foreach op yields chunks of `DAGSTER_METAFLOW_CHUNK_SIZE` (default 20) task
indices on its second dynamic output instead, and each body step's `chunk_<step>` op runs
its chunk's tasks one after another. Each task keeps what a task op gives it: its own
attempts (@retry, @catch) and @timeout, its lines and a line when it ends in the op's
compute log, a warning event per failed attempt, its row (pathspec, attempts, seconds) in
the table on the op's output, and its failure (pathspec and the user's error) failing the
op. No event per successful task: on the default SQLite instance each event is an fsync'd
commit, and a log event per task took half of the run worker's time at width 1,000. A chunk
op started again after a lost run worker skips the tasks that already succeeded.

A nested foreach (one inside another's body) chunks the same way when its children, counted
over every task of the foreach, are more than the threshold: its `fanout_<step>` op yields
chunks of each foreach task's children (a chunk never spans two of them, so its mapping key
names its tasks: `tasks_0_to_19_in_3_1`), and the join's `regroup_<join>` op collects both
paths.

A chunk travels as `[[index, upstream pathspec], ...]` (a nested foreach's index is the
child's index path); a chunk op returns the same pairs with its own tasks' pathspecs, for the
next body step or the join.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from dagster import DynamicOutput, Failure, MetadataValue, OpExecutionContext

from .. import naming
from ..task_options import StepOptions, TaskOptions
from .ids import TASKS_KEY
from .process import announce
from .steprun import StepRunner
from .taskmeta import TaskMetadata

CHUNK_ABOVE_VAR = "DAGSTER_METAFLOW_CHUNK_ABOVE"
CHUNK_SIZE_VAR = "DAGSTER_METAFLOW_CHUNK_SIZE"
DEFAULT_CHUNK_ABOVE = 500
DEFAULT_CHUNK_SIZE = 20

Chunk = Sequence[Sequence[Any]]  # [[index, pathspec], ...]


def _setting(var: str, default: int, minimum: int) -> int | None:
    """An integer setting from the environment; `off` (for the threshold) means never."""
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    if text.lower() == "off" and var == CHUNK_ABOVE_VAR:
        return None
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise Failure(
            description=f"{var}={text!r} is not valid: use an integer >= {minimum}"
            + (" or 'off'" if var == CHUNK_ABOVE_VAR else "")
        )
    return value


def chunk_size(width: int) -> int | None:
    """Tasks per chunk for a foreach of `width` tasks; None: one op per task."""
    above = _setting(CHUNK_ABOVE_VAR, DEFAULT_CHUNK_ABOVE, 0)
    if above is None or width <= above:
        return None
    return _setting(CHUNK_SIZE_VAR, DEFAULT_CHUNK_SIZE, 1)


def chunk_outputs(
    pathspec: str,
    width: int,
    size: int,
    output: str,
    metadata: Any = None,
    parent: tuple[int, ...] = (),
) -> Iterator[DynamicOutput[list[list[Any]]]]:
    """The children of foreach task `pathspec` (at index path `parent`) as chunks of `size`
    on `output` (metadata on the first). A top-level foreach's chunk items carry the child's
    index, a nested one's its whole index path."""
    for first in range(0, width, size):
        last = min(first + size, width) - 1
        yield DynamicOutput(
            [[[*parent, i] if parent else i, pathspec] for i in range(first, last + 1)],
            output_name=output,
            mapping_key=naming.chunk_key(first, last, parent),
            metadata=metadata if first == 0 else None,
        )


def index_path(index: int | Sequence[int]) -> tuple[int, ...]:
    """A chunk item's foreach index path (an index alone at top level)."""
    return (index,) if isinstance(index, int) else tuple(index)


def chunk_tasks(chunks: Sequence[Chunk]) -> list[str]:
    """The task pathspecs of collected chunks (a chunked foreach join's inputs)."""
    return [pathspec for chunk in chunks for _index, pathspec in chunk]


class ChunkRunner:
    """Runs the tasks of one chunk of a body step."""

    def __init__(self, runner: StepRunner, meta: TaskMetadata) -> None:
        self.runner = runner
        self.meta = meta

    def run(
        self,
        context: OpExecutionContext,
        tasks: Sequence[tuple[Any, TaskOptions]],
        options: StepOptions,
        retry: tuple[int, int | None],
    ) -> list[list[Any]]:
        """Run every task of the chunk in order, each until it succeeded or its attempts ran
        out (which fails the op, naming the task); returns `[[index, pathspec], ...]`."""
        done: list[list[Any]] = []
        rows: list[str] = []
        for index, task in tasks:
            started = time.monotonic()
            what = f"Task {task.pathspec}"
            made = self.runner.run_until_done(context, task, options, retry, what, show=False)
            seconds = time.monotonic() - started
            how = "had already succeeded" if made == 0 else f"succeeded in {seconds:.1f}s"
            announce(f"[dagster-metaflow] task {task.pathspec} {how} ({made} attempt(s) here)\n")
            rows.append(f"| `{task.pathspec}` | {made} | {seconds:.1f} |")
            done.append([index, task.pathspec])
        if done:
            table = "| task | attempts run here | seconds |\n|---|---|---|\n" + "\n".join(rows)
            context.add_output_metadata(
                {
                    TASKS_KEY: MetadataValue.int(len(done)),
                    "first task": self.meta.pathspec_value(done[0][1]),
                    "task table": MetadataValue.md(table),
                }
            )
        return done
