"""The benchmark flows' shapes as plain Dagster jobs whose ops do nothing.

    dagster job execute -f benchmarks/bare_jobs.py -j linear10    (or foreach16, nested4x4, one_op)

`benchmarks/trigger.py --bare` times these beside the compiled flows: what Dagster itself
costs for a job of that shape, as users write one: the command's start, the instance, the
run's creation and one op execution per Metaflow task (plus one helper op per collect
barrier in nested4x4, as the compiled job has), in Dagster's in-process executor, each op
returning at once. A compiled flow adds Metaflow's work per task; it saves what our
executor and event writer do faster than Dagster's own executor.
"""

from __future__ import annotations

from collections.abc import Iterator

from dagster import Definitions, DynamicOut, DynamicOutput, in_process_executor, job, op


@op
def step(x: int) -> int:
    """One Metaflow step's place: takes its input, does nothing."""
    return x + 1


@op
def first() -> int:
    return 0


@op(out=DynamicOut(int))
def split_16() -> Iterator[DynamicOutput[int]]:
    for i in range(16):
        yield DynamicOutput(i, mapping_key=str(i))


@op(out=DynamicOut(int))
def split_4() -> Iterator[DynamicOutput[int]]:
    for i in range(4):
        yield DynamicOutput(i, mapping_key=str(i))


@op
def join(xs: list[int]) -> int:
    return sum(xs)


@op(out=DynamicOut(int))
def spread_16(xs: list[int]) -> Iterator[DynamicOutput[int]]:
    """The barrier between the levels: every outer item's inner items, flattened."""
    for i in range(16):
        yield DynamicOutput(i, mapping_key=str(i))


@op(out=DynamicOut(int))
def regroup_4(xs: list[int]) -> Iterator[DynamicOutput[int]]:
    for i in range(4):
        yield DynamicOutput(i, mapping_key=str(i))


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
