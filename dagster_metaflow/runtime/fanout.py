"""The ops whose outputs depend on what a task did: foreach fan-out (one Dagster dynamic
output per split), regrouping for nested foreach, a @parallel step's tasks, the branch a
switch chose, and a recursive switch run as a loop of tasks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dagster import DynamicOutput, Failure, OpExecutionContext, Output

from .. import naming
from ..task_options import StepOptions, TaskOptions
from .chunks import CHUNK_ABOVE_VAR, chunk_outputs, chunk_size
from .ids import ITERATIONS_KEY, indices_of, not_taken, not_taken_metadata, path_sort_key, taken
from .steprun import StepRunner
from .taskmeta import TaskMetadata
from .taskstore import TaskStore
from .transitions import Transitions


class Fanout:
    """Dynamic and conditional outputs of one flow's ops."""

    def __init__(
        self, store: TaskStore, meta: TaskMetadata, checks: Transitions, runner: StepRunner
    ) -> None:
        self.store = store
        self.meta = meta
        self.checks = checks
        self.runner = runner

    def fan_out(
        self, context: OpExecutionContext, pathspec: str, chunks: str | None = None
    ) -> Iterator[DynamicOutput[Any]]:
        """One DynamicOutput per foreach split, read from the task's final attempt; with
        `chunks` (the op's output of chunks), chunks of them when the foreach is wider than
        the chunking threshold (chunks.py)."""
        if not taken(pathspec):
            # a foreach on a branch a top-level switch did not take (wiring.marking_switches):
            # one marker child, so that no op with a dynamic output is skipped
            context.log.info(f"Foreach {pathspec[1:]} is on a branch not taken: one marker child")
            yield DynamicOutput(
                pathspec, mapping_key=naming.mapping_key((0,)), metadata=not_taken_metadata()
            )
            return
        split = self._split(pathspec, with_metadata=True)
        width = 1 if split.ubf else split.num_splits
        size = chunk_size(width) if chunks is not None and not split.ubf else None
        if chunks is None or size is None:
            context.log.info(f"Foreach {pathspec} yields {width} child task(s)")
            yield from self._children(pathspec, split)
            return
        context.log.info(
            f"Foreach {pathspec} yields {width} child task(s), "
            f"in {-(-width // size)} chunk(s) of up to {size} ({CHUNK_ABOVE_VAR})"
        )
        yield from chunk_outputs(pathspec, width, size, chunks, split.metadata)

    def fan_out_all(
        self, context: OpExecutionContext, pathspecs: Sequence[str], chunks: str | None = None
    ) -> Iterator[DynamicOutput[Any]]:
        """Nested foreach: fan out the children of every collected foreach task at once; with
        `chunks` (the op's output of chunks), in chunks of each task's children when they
        are more than the chunking threshold in all (chunks.py)."""
        ordered = sorted(pathspecs, key=path_sort_key)
        splits = {p: self._split(p) for p in ordered if taken(p)}
        width = sum(s.num_splits for s in splits.values() if not s.ubf)
        size = chunk_size(width) if chunks is not None else None
        count = 0
        for pathspec in ordered:
            split = splits.get(pathspec)
            if split is None:
                # a foreach on a branch not taken: one marker child keeps its place
                yield DynamicOutput(
                    pathspec,
                    mapping_key=naming.mapping_key((*indices_of(pathspec), 0)),
                    metadata=not_taken_metadata(),
                )
            elif size is None or split.ubf:
                for child in self._children(pathspec, split):
                    count += 1
                    yield child
            else:
                assert chunks is not None
                count += split.num_splits
                parent = indices_of(pathspec)
                yield from chunk_outputs(pathspec, split.num_splits, size, chunks, parent=parent)
        how = "" if size is None else f", in chunks of up to {size} ({CHUNK_ABOVE_VAR})"
        context.log.info(f"{len(pathspecs)} foreach task(s) yield {count} child task(s){how}")

    def _split(self, pathspec: str, with_metadata: bool = False) -> _Split:
        """How one foreach task splits, from one read of its datastore."""
        ds = self.store.task_datastore(pathspec)
        return _Split(
            num_splits=int(ds["_foreach_num_splits"] or 0),
            ubf=bool("_unbounded_foreach" in ds and ds["_unbounded_foreach"]),
            metadata=self.meta.of_task(pathspec, ds) if with_metadata else None,
        )

    def _children(self, pathspec: str, split: _Split) -> Iterator[DynamicOutput[str]]:
        """Children of one foreach task, keyed by its index path (from its task id) + i."""
        parent, metadata = indices_of(pathspec), split.metadata
        if split.ubf:
            # one control task, which starts the foreach's tasks itself (Metaflow's UBF)
            yield DynamicOutput(
                pathspec, mapping_key=naming.mapping_key(parent, ubf=True), metadata=metadata
            )
            return
        for i in range(split.num_splits):
            # the task's metadata once, on the first child: repeated on every output it was
            # ~1.2 KB of event log per child, the same text 10,000 times in a wide run
            yield DynamicOutput(
                pathspec,
                mapping_key=naming.mapping_key((*parent, i)),
                metadata=metadata if i == 0 else None,
            )

    def regroup(self, depth: int, *inputs: Sequence[str]) -> Iterator[DynamicOutput[list[str]]]:
        """Group collected pathspecs by their first `depth` foreach indices, one output each."""
        groups: dict[tuple[int, ...], list[str]] = {}
        for values in inputs:
            for pathspec in values:
                groups.setdefault(indices_of(pathspec)[:depth], []).append(pathspec)
        for key in sorted(groups):
            yield DynamicOutput(
                sorted(groups[key], key=path_sort_key), mapping_key=naming.mapping_key(key)
            )

    def mapper_tasks(self, pathspec: str) -> list[str]:
        """The tasks of a @parallel step (control + workers), from its control task."""
        if not taken(pathspec):
            return [pathspec]
        return self.store.control_mappers(pathspec, pathspec.split("/")[0])

    def switch(
        self,
        context: OpExecutionContext,
        pathspec: str,
        outputs: Mapping[str, str],
        always: bool = False,
    ) -> Iterator[Output[str]]:
        """Yield the output of the branch the switch task chose. The other outputs are not
        yielded (Dagster skips those branches) or, with `always`, carry a not-taken marker."""
        if not taken(pathspec):  # this switch itself is on a branch not taken
            for name in outputs.values():
                yield _marker(pathspec, name)
            return
        chosen = self.checks.chosen_step(pathspec)
        if chosen not in outputs:
            raise Failure(description=f"switch task {pathspec} chose unknown step {chosen!r}")
        context.log.info(f"Switch {pathspec} chose {chosen!r}")
        yield from _exits(pathspec, chosen, outputs, always)

    def run_loop(
        self,
        context: OpExecutionContext,
        task: TaskOptions,
        options: StepOptions,
        outputs: Mapping[str, str],
        retry: tuple[int, int | None] = (0, None),
        always: bool = False,
    ) -> Iterator[Output[str]]:
        """A recursive switch: one Metaflow task per iteration until it leaves the loop.

        Each iteration has its own attempts, as natively: `current.retry_count` starts at 0
        in every iteration and @retry (`retry`: max retries, delay) applies per iteration.
        An op that is started again resumes after the last finished iteration. With `always`
        (a loop inside a foreach, or one deciding whether a top-level foreach runs) the exits
        not taken carry a not-taken marker, as `switch`.
        """
        if not any(taken(u) for u in task.input_paths):
            for name in outputs.values():
                yield _marker(not_taken(task.pathspec), name)
            return
        iteration, previous = 0, task.input_paths
        while True:
            tid = task.task_id if iteration == 0 else f"{task.task_id}-r{iteration}"
            current = replace(task, task_id=tid, input_paths=previous)
            what = f"Loop {task.step!r} iteration {iteration + 1}"
            self.runner.run_until_done(context, current, options, retry, what)
            chosen = self.checks.chosen_step(current.pathspec)
            if chosen != task.step:
                context.log.info(f"Loop {task.step!r} finished after {iteration + 1} iteration(s)")
                yield from _exits(current.pathspec, chosen, outputs, always, iteration + 1)
                return
            iteration, previous = iteration + 1, (current.pathspec,)


@dataclass(frozen=True)
class _Split:
    """A foreach task's split: its width, whether it is unbounded (one control task), and the
    task's metadata for the fan-out's first output."""

    num_splits: int
    ubf: bool
    metadata: dict[str, Any] | None


def _exits(
    pathspec: str,
    chosen: str,
    outputs: Mapping[str, str],
    always: bool,
    iterations: int | None = None,
) -> Iterator[Output[str]]:
    """The output of the step chosen (a loop's: with the tasks it ran, its `iterations`);
    with `always` a not-taken marker on every other one."""
    ran = {} if iterations is None else {ITERATIONS_KEY: iterations}
    yield Output(pathspec, outputs[chosen], metadata=ran)
    if always:
        for step, name in outputs.items():
            if step != chosen:
                yield _marker(not_taken(pathspec), name)


def _marker(marker: str, name: str) -> Output[str]:
    """Output `name` carrying a not-taken marker, said so in its metadata."""
    return Output(marker, name, metadata=not_taken_metadata())
