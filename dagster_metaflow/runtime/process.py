"""A step's process under Dagster: supervised (zygote fork or plain spawn), stopped when
the run is terminated, told where it runs in Dagster, and the runtime's lines in its log.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import OpExecutionContext

from .ids import run_page_url
from .supervise import ProcessResult, StepControl, current_control, run_supervised
from .zygote import spawn_step_process


def supervise_step(
    context: OpExecutionContext,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    fork: bool = True,
    **kw: Any,
) -> ProcessResult:
    """Run a step's process to completion (`run_supervised`), forked from the zygote when
    `fork` and the zygote is enabled; stopped with the run however the op is executed."""
    spawn = spawn_step_process if fork else None
    if current_control.get() is not None:  # our executor stops its steps itself
        return run_supervised(argv, env=env, cwd=cwd, spawn=spawn, **kw)
    # another executor runs this op (a multiprocess child, a Celery worker, a pod): a
    # terminated run may never tell this process, so watch the run's status instead
    with watch_run(context) as control:
        return run_supervised(argv, env=env, cwd=cwd, spawn=spawn, control=control, **kw)


@contextmanager
def watch_run(context: OpExecutionContext, every: float | None = None) -> Iterator[StepControl]:
    """A StepControl cancelled when the run is being terminated (CANCELING/CANCELED),
    polled from the instance every `every` seconds ($DAGSTER_METAFLOW_CANCEL_POLL, 2 s)."""
    from dagster import DagsterRunStatus

    control = StepControl(reason="run terminated")
    every = (
        every if every is not None else float(os.environ.get("DAGSTER_METAFLOW_CANCEL_POLL", "2"))
    )
    done = threading.Event()
    stopping = (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED)

    def poll() -> None:
        while not done.wait(every):
            try:
                run = context.instance.get_run_by_id(context.run_id)
            except Exception:  # a busy instance: ask again at the next tick
                continue
            if run is not None and run.status in stopping:
                control.cancel.set()
                return

    watcher = threading.Thread(target=poll, name="dagster-metaflow-run-watch", daemon=True)
    watcher.start()
    try:
        yield control
    finally:
        done.set()


def announce(text: str) -> None:
    """A runtime line in the step's own compute log, not an event: on the default SQLite
    instance every event is an fsync'd commit."""
    control = current_control.get()
    line = text.encode()
    if control is not None and control.sink is not None:
        control.sink("stderr", line)
    else:
        sys.stderr.write(text)
        sys.stderr.flush()


def dagster_env(context: OpExecutionContext) -> dict[str, str]:
    """Where the task runs in Dagster, for the `dagster_internal` decorator's metadata."""
    key = str(context.op_handle)
    if context.get_mapping_key():
        key += f"[{context.get_mapping_key()}]"
    env = {
        "DAGSTER_METAFLOW_DAGSTER_RUN_ID": context.run_id,
        "DAGSTER_METAFLOW_JOB": context.job_name,
        "DAGSTER_METAFLOW_STEP_KEY": key,
    }
    triggers = context.run.tags.get("dagster-metaflow/triggers")
    if triggers:  # the events that started this run: `current.trigger` (dagster_internal)
        env["DAGSTER_METAFLOW_TRIGGERS"] = triggers
    page = run_page_url(context.run_id)
    if page:
        env["DAGSTER_METAFLOW_RUN_URL"] = page
    return env
