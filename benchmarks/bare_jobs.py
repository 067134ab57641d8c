"""The benchmark flows' shapes as plain Dagster jobs whose ops do nothing.

    dagster job execute -f benchmarks/bare_jobs.py -j linear10    (or foreach16, nested4x4, one_op)

`benchmarks/trigger.py --bare` times these beside the compiled flows: what Dagster itself
costs for a job of that shape, as users write one: the command's start, the instance, the
run's creation and one op execution per Metaflow task (plus, in nested4x4, the two helper
ops the compiled job has between its levels, `fanout_fan` and `regroup_inner_join`), in
Dagster's in-process executor, each op returning at once. A reference point, not a floor
for a compiled flow: this file runs on plain Dagster (no run database from a template, no
kept connections, every event written where it is emitted), a compiled flow does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dagster import Definitions, DynamicOut, DynamicOutput, in_process_executor, job, op


@op
def step(x: int) -> int:
    """One Metaflow step's place: takes its input, does nothing."""
    return x + 1


@op
def first() -> int:
    return 0


@op
def join(xs: list[int]) -> int:
    return sum(xs)


def _fan_out(name: str, n: int, after_collect: bool) -> Any:
    """An op yielding `n` dynamic outputs: a foreach's split, or (after a collect) a barrier
    helper spreading the items of the next level."""

    def items() -> Iterator[DynamicOutput[int]]:
        for i in range(n):
            yield DynamicOutput(i, mapping_key=str(i))

    if after_collect:

        @op(name=name, out=DynamicOut(int))
        def helper(xs: list[int]) -> Iterator[DynamicOutput[int]]:
            yield from items()

        return helper

    @op(name=name, out=DynamicOut(int))
    def split() -> Iterator[DynamicOutput[int]]:
        yield from items()

    return split


split_16 = _fan_out("split_16", 16, after_collect=False)
split_4 = _fan_out("split_4", 4, after_collect=False)
# the compiled nested job's two helpers, `fanout_fan` and `regroup_inner_join`
spread_16 = _fan_out("spread_16", 16, after_collect=True)
regroup_4 = _fan_out("regroup_4", 4, after_collect=True)


@job(executor_def=in_process_executor)
def one_op() -> None:
    """Dagster's fixed cost of a `job execute`: one op."""
    first()


@job(executor_def=in_process_executor)
def linear10() -> None:
    x = first()
    for _ in range(9):
        x = step(x)


@job(executor_def=in_process_executor)
def foreach16() -> None:
    step(join(split_16().map(step).collect()))


@job(executor_def=in_process_executor)
def nested4x4() -> None:
    fanned = split_4().map(step).collect()
    leaves = spread_16(fanned).map(step).collect()
    step(join(regroup_4(leaves).map(step).collect()))


defs = Definitions(jobs=[one_op, linear10, foreach16, nested4x4])
