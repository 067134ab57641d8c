"""Prototype of the chunked fan-out, for `benchmarks/chunked.py` only (not the product).

The same `start -> body x N -> join -> end` flow as a compiled file, but each body op runs a
chunk of DM_BENCH_CHUNK Metaflow tasks one after another, through the same runtime
(`MetaflowFlow.run_step`: forked step, supervision, logs in Metaflow's datastore), so that
one Dagster op's bookkeeping is shared by the chunk. It reuses the compiled file's `FLOW`
(DM_BENCH_COMPILED: its path). No retries, no per-task metadata: the least a chunk op
does, to measure what one op per task costs against it.
"""

# no `from __future__ import annotations`: Dagster reads the ops' annotations at definition
import importlib.util
import os
from collections.abc import Iterator

from dagster import Definitions, DynamicOut, DynamicOutput, OpExecutionContext, Out, job, op

from dagster_metaflow.naming import task_id_for
from dagster_metaflow.runtime import executor_with_defaults, metaflow_executor, metaflow_io_manager

_spec = importlib.util.spec_from_file_location("compiled_flow", os.environ["DM_BENCH_COMPILED"])
assert _spec is not None and _spec.loader is not None
_compiled = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_compiled)
FLOW = _compiled.FLOW
CHUNK = int(os.environ.get("DM_BENCH_CHUNK", "50"))


def _task(context: OpExecutionContext, step: str, upstream: str | list[str], task_id: str, split_index: int | None = None) -> str:
    return FLOW.run_step(
        context, step, FLOW.run_id(context), upstream, task_id,
        retry_count=context.retry_number, max_user_code_retries=0, tags=[], extra_env={},
        split_index=split_index,
    )


@op(out=DynamicOut(list))
def op_start(context: OpExecutionContext) -> Iterator[DynamicOutput[list]]:
    upstream = FLOW.init_run(context, FLOW.run_id(context), None, tags=[])
    task = _task(context, "start", upstream, "start")
    indices = [int(child.mapping_key) for child in FLOW.fan_out(context, task)]
    for first in range(0, len(indices), CHUNK):
        yield DynamicOutput([task, indices[first : first + CHUNK]], mapping_key=str(first))


@op
def op_body(context: OpExecutionContext, chunk: list) -> list:
    parent, indices = chunk
    return [_task(context, "body", parent, task_id_for("body", str(i)), split_index=i) for i in indices]


@op
def op_join(context: OpExecutionContext, chunks: list) -> str:
    return _task(context, "join", [p for chunk in chunks for p in chunk], "join")


@op(out={"flow_run": Out(str)})
def op_end(context: OpExecutionContext, upstream: str) -> str:
    return _task(context, "end", upstream, "end")


@job(
    executor_def=executor_with_defaults(metaflow_executor, {"max_concurrent": 16}),
    resource_defs={"io_manager": metaflow_io_manager},
)
def chunked() -> None:
    op_end(op_join(op_start().map(op_body).collect()))


defs = Definitions(jobs=[chunked])
