"""What a generated op calls: `FLOW = MetaflowFlow(...)` and its methods.

`MetaflowFlow` is the record `create` baked into the file (settings.py) and a facade over the
parts that do the work: the task store (taskstore.py), the step command (command.py), run
preparation (prepare.py), task attempts (attempt.py, steprun.py), transitions and dynamic
outputs (transitions.py, fanout.py). Its method names and keyword arguments are what
generated files call; the options of a task travel as one TaskOptions record.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from dagster import DynamicOutput, OpExecutionContext, Output

from .. import naming
from ..task_options import StepOptions, TaskOptions
from .attempt import Attempts
from .chunks import Chunk, ChunkRunner, chunk_tasks, index_path
from .command import StepCommand
from .fanout import Fanout
from .ids import task_id_for
from .materialize import asset_outputs
from .prepare import RunPreparation
from .settings import FlowSettings
from .steprun import StepRunner
from .taskmeta import TaskMetadata
from .taskstore import TaskStore
from .transitions import Transitions
from .worker import RECOVERING_VAR, WORKER_VAR
from .zygote import (
    POOL,
    RUN_WORKER_ENV,
    fork_enabled,
    request_spare,
    worker_job_key,
    zygote_env,
)

__all__ = [
    "MetaflowFlow",
    "flow_of_context",
    "flow_of_job",
    "flow_of_job_named",
    "request_spare_zygote",
    "run_worker_env",
    "warm_up_flows",
]

_LIVE_FLOWS: list[MetaflowFlow] = []

# a run worker's identity: never passed on to a spare zygote
_WORKER_IDENTITY = (WORKER_VAR, RECOVERING_VAR)
_job_run_here: list[tuple[str | None, str | None] | None] = []  # found once (`_job_to_run`)


def run_worker_env(job_name: str, tags: Mapping[str, str]) -> str:
    """The value of RUN_WORKER_ENV, set by our run launcher for the run workers it starts
    (`dagster api execute_run`), for a run of job `job_name` tagged `tags`."""
    return worker_job_key(job_name, tags.get("metaflow/flow"))


def request_spare_zygote() -> None:
    """At the end of a run in a run worker our launcher's worker zygote forked: have that
    zygote start the step zygote of the job's next run now (`zygote.request_spare`). Never
    fails the run: the next one starts its own zygote then."""
    job = _job_to_run()
    if job is None or job[0] is None or not fork_enabled():
        return
    try:
        flow = flow_of_job_named(job[0], {"metaflow/flow": job[1]} if job[1] else {})
        if flow is None:
            return
        env = zygote_env(flow.command.step_env())
        for var in _WORKER_IDENTITY:  # this worker's, not the next one's
            env.pop(var, None)
        request_spare(worker_job_key(job[0], job[1]), sys.executable, env)
    except Exception:
        pass


def _job_to_run() -> tuple[str | None, str | None] | None:
    """(job name, flow tag) of the run this process is about to execute, when that is known
    before the run starts: in a run worker our launcher started (RUN_WORKER_ENV, removed so
    that steps do not inherit it), or in `dagster job execute` (its --job; None for the
    file's only job). None elsewhere: a webserver, daemon or code server only loads
    definitions."""
    if not _job_run_here:
        job: tuple[str | None, str | None] | None = None
        try:
            name, flow_tag = json.loads(os.environ.pop(RUN_WORKER_ENV, "null") or "null")
            job = (str(name), flow_tag)
        except (TypeError, ValueError):
            job = _job_of_dagster_job_execute(sys.argv)
        _job_run_here.append(job)
    return _job_run_here[0]


def _job_of_dagster_job_execute(argv: Sequence[str]) -> tuple[str | None, None] | None:
    """(--job's value or None, None) when `argv` is Dagster's `dagster job execute` (also
    as `python -m dagster job execute`)."""
    program = os.path.normpath(argv[0]) if argv else ""
    is_dagster = os.path.basename(program) == "dagster" or program.endswith(
        os.path.join("dagster", "__main__.py")
    )
    if not is_dagster or list(argv[1:3]) != ["job", "execute"]:
        return None
    rest = list(argv[3:])
    for i, arg in enumerate(rest):
        if arg in ("-j", "--job") and i + 1 < len(rest):
            return rest[i + 1], None
        if arg.startswith("--job="):
            return arg.removeprefix("--job="), None
        if arg.startswith("-j") and len(arg) > 2:
            return arg[2:], None
    return None, None


def _on_defined(flow: MetaflowFlow) -> None:
    """In a process about to run this flow's job: start its step zygote now, not when the
    executor starts (~0.1 s later in a run worker, ~0.3 s in `dagster job execute`), so the
    run's first step waits less for it; read the head of Dagster's schema migrations once,
    not at every storage open (`remember_alembic_heads`); keep the SQLite connections this
    process will write the run's events through, from the run's creation on (`dagster job
    execute` creates it: its event database is then copied from a template,
    `keep_sqlite_connections`); and collect no garbage until Metaflow is imported, then
    keep collections off the heap loaded so far (`heap`)."""
    job = _job_to_run()
    if job is None or not (job[0] is None or _runs_job(flow, *job)):
        return
    from .._dagster_sqlite import keep_sqlite_connections, remember_alembic_heads
    from .heap import defer_collection, resume_collection

    remember_alembic_heads()
    keep_sqlite_connections()
    defer_collection()  # the run's start and Metaflow's import: ~10 ms less
    try:
        # the run's first op reads the flow's datastore: Metaflow's import (~0.1 s of a
        # process that has not imported it) is paid here, while Dagster creates the run
        threading.Thread(
            target=_open_store, args=(flow,), name="dagster-metaflow:open", daemon=True
        ).start()
    except BaseException as exc:
        resume_collection()
        if isinstance(exc, RuntimeError):  # no thread now: the first op opens it
            return
        raise
    if fork_enabled():
        with contextlib.suppress(RuntimeError):  # else the executor warms it up
            threading.Thread(
                target=flow.warm_up, name="dagster-metaflow:warm-up", daemon=True
            ).start()


def _open_store(flow: MetaflowFlow) -> None:
    """Import Metaflow and open the flow's datastore, then collect garbage again, past
    everything loaded so far (`heap.resume_collection` freezes it)."""
    from .heap import resume_collection

    try:
        flow.store.open()
    finally:
        resume_collection()


def warm_up_flows() -> None:
    """Called by the executor when a run starts: prepare every flow defined in this process."""
    for flow in list(_LIVE_FLOWS):
        try:
            flow.warm_up()
        except Exception:
            pass


def flow_of_job(job_def: Any) -> MetaflowFlow | None:
    """The compiled flow a job runs (the generated module's FLOW), by the job's flow tag."""
    return flow_of_job_named(job_def.name, job_def.tags)


def flow_of_job_named(job_name: str, tags: Mapping[str, str]) -> MetaflowFlow | None:
    """`flow_of_job` from the job's name and tags (a job's snapshot has both): the flow
    compiled as that job, else one compiled without a job name, by its flow tag."""
    flows = [f for f in _LIVE_FLOWS if _runs_job(f, job_name, tags.get("metaflow/flow"))]
    by_job = [f for f in flows if f.job_name is not None]
    return (by_job or flows)[-1] if flows else None


def _runs_job(flow: MetaflowFlow, job_name: str | None, flow_tag: str | None) -> bool:
    return flow.job_name == job_name if flow.job_name is not None else flow.name == flow_tag


def flow_of_context(context: Any) -> MetaflowFlow | None:
    """The compiled flow of the job a run's execution context runs; None when there is none
    or the job cannot be read (the run's end duties then have nothing to do)."""
    try:
        return flow_of_job(context.job.get_definition())
    except Exception:
        return None


@dataclass(frozen=True)
class MetaflowFlow(FlowSettings):
    """Constants of one compiled flow plus the operations its ops perform."""

    def __post_init__(self) -> None:
        _LIVE_FLOWS.append(self)
        _on_defined(self)

    # -- the parts (built on first use) ------------------------------------------------
    @cached_property
    def store(self) -> TaskStore:
        return TaskStore(self)

    @cached_property
    def command(self) -> StepCommand:
        return StepCommand(self, self.store)

    @cached_property
    def preparation(self) -> RunPreparation:
        return RunPreparation(self, self.store, self.command)

    @cached_property
    def checks(self) -> Transitions:
        return Transitions(self, self.store, self._meta)

    @cached_property
    def runner(self) -> StepRunner:
        attempts = Attempts(self, self.store, self.command, self._meta)
        return StepRunner(
            self.store, self.command, self._meta, self.checks, self.preparation, attempts
        )

    @cached_property
    def fanout(self) -> Fanout:
        return Fanout(self.store, self._meta, self.checks, self.runner)

    @cached_property
    def chunks(self) -> ChunkRunner:
        return ChunkRunner(self.runner, self._meta)

    @cached_property
    def _meta(self) -> TaskMetadata:
        return TaskMetadata(self, self.store, self.command)

    def warm_up(self) -> None:
        """Start the zygote this flow's steps will fork from (off the critical path)."""
        if fork_enabled():
            POOL.get(sys.executable, self.command.step_env())

    # -- run preparation ---------------------------------------------------------------
    def run_id(self, context: OpExecutionContext) -> str:
        """The Metaflow run of this Dagster run, prepared once per run."""
        return self.preparation.run_id(context)

    def init_run(
        self, context: OpExecutionContext, run_id: str, config: Any, tags: Sequence[str] = ()
    ) -> str:
        """Persist the run's parameters once (`flow.py init`); returns the _parameters pathspec."""
        return self.preparation.init_run(context, run_id, config, tags)

    def task_id(self, context: OpExecutionContext, step: str) -> str:
        return task_id_for(step, context.get_mapping_key())

    def split_index(self, context: OpExecutionContext) -> int | None:
        """The foreach index of a mapped op; None for an unbounded foreach's control task."""
        key = context.get_mapping_key()
        if naming.is_ubf_key(key):
            return None
        return naming.indices_from_mapping_key(key)[-1]

    # -- tasks ---------------------------------------------------------------------------
    def run_step(
        self,
        context: OpExecutionContext,
        step: str,
        run_id: str,
        upstream: str | Sequence[str],
        task_id: str,
        *,
        retry_count: int = 0,
        max_user_code_retries: int = 0,
        tags: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        timeout: int | None = None,
        split_index: int | None = None,
        ubf_context: str | None = None,
        decorator_specs: Sequence[str] = (),
        launcher: str | None = None,
    ) -> str:
        """Run one Metaflow task to completion; return its pathspec `run/step/task`.

        With `launcher` (@kubernetes, @batch, @conda, @pypi) the task is launched by its
        decorators' runtime hooks as under `flow.py run` (see native.py), never forked."""
        options = _step_options(
            max_user_code_retries, extra_env, timeout, launcher, ubf_context, decorator_specs
        )
        task = self._task(options, step, run_id, upstream, task_id, tags, split_index, retry_count)
        return self.runner.run(context, task, options)

    def materialize(
        self, context: OpExecutionContext, task: str, outputs: Mapping[str, str | None]
    ) -> Iterator[Output[str]]:
        """The end op's asset outputs, with metadata, once the `end` task succeeded."""
        return asset_outputs(self, context, task, outputs, card_root=self._meta.card_root())

    def run_loop(
        self,
        context: OpExecutionContext,
        step: str,
        run_id: str,
        upstream: str | Sequence[str],
        task_id: str,
        *,
        outputs: Mapping[str, str],
        max_retries: int = 0,
        retry_delay: int | None = None,
        always: bool = False,
        retry_count: int = 0,  # ignored: every iteration counts its own attempts
        max_user_code_retries: int = 0,
        tags: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        timeout: int | None = None,
        split_index: int | None = None,
        ubf_context: str | None = None,
        decorator_specs: Sequence[str] = (),
        launcher: str | None = None,
    ) -> Iterator[Output[str]]:
        """A recursive switch: one Metaflow task per iteration until it leaves the loop."""
        options = _step_options(
            max_user_code_retries, extra_env, timeout, launcher, ubf_context, decorator_specs
        )
        task = self._task(options, step, run_id, upstream, task_id, tags, split_index)
        return self.fanout.run_loop(
            context, task, options, outputs, (max_retries, retry_delay), always
        )

    def run_chunk(
        self,
        context: OpExecutionContext,
        step: str,
        run_id: str,
        chunk: Chunk,
        *,
        foreach_child: bool = False,
        max_retries: int = 0,
        retry_delay: int | None = None,
        max_user_code_retries: int = 0,
        tags: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        timeout: int | None = None,
        ubf_context: str | None = None,
        decorator_specs: Sequence[str] = (),
        launcher: str | None = None,
    ) -> list[list[Any]]:
        """The tasks of one chunk of a foreach body step (`[[index, upstream], ...]`), each
        with its own attempts; returns `[[index, pathspec], ...]` (chunks.py)."""
        options = _step_options(
            max_user_code_retries, extra_env, timeout, launcher, ubf_context, decorator_specs
        )
        tasks = []
        for index, upstream in chunk:
            path = index_path(index)
            task_id = task_id_for(step, naming.mapping_key(path))
            split = path[-1] if foreach_child else None
            tasks.append((index, self._task(options, step, run_id, upstream, task_id, tags, split)))
        return self.chunks.run(context, tasks, options, (max_retries, retry_delay))

    def chunk_tasks(self, chunks: Sequence[Chunk]) -> list[str]:
        """The task pathspecs of a chunked foreach join's collected chunks."""
        return chunk_tasks(chunks)

    def _task(
        self,
        options: StepOptions,
        step: str,
        run_id: str,
        upstream: str | Sequence[str],
        task_id: str,
        tags: Sequence[str],
        split_index: int | None,
        retry_count: int = 0,
    ) -> TaskOptions:
        """The task an op call names, its inputs as the op received them."""
        paths = [upstream] if isinstance(upstream, str) else list(upstream)
        more = {"retry_count": retry_count, "split_index": split_index, "namespace": self.namespace}
        return options.task(step, run_id, task_id, paths, tags=tuple(tags), **more)

    # -- dynamic outputs -----------------------------------------------------------------
    def fan_out(
        self, context: OpExecutionContext, pathspec: str, chunks: str | None = None
    ) -> Iterator[DynamicOutput[Any]]:
        return self.fanout.fan_out(context, pathspec, chunks)

    def fan_out_all(
        self, context: OpExecutionContext, pathspecs: Sequence[str], chunks: str | None = None
    ) -> Iterator[DynamicOutput[Any]]:
        return self.fanout.fan_out_all(context, pathspecs, chunks)

    def regroup(
        self, context: OpExecutionContext, depth: int, *inputs: Sequence[str]
    ) -> Iterator[DynamicOutput[list[str]]]:
        return self.fanout.regroup(depth, *inputs)

    def mapper_tasks(self, pathspec: str) -> list[str]:
        return self.fanout.mapper_tasks(pathspec)

    def switch(
        self,
        context: OpExecutionContext,
        pathspec: str,
        outputs: Mapping[str, str],
        always: bool = False,
    ) -> Iterator[Output[str]]:
        return self.fanout.switch(context, pathspec, outputs, always)

    def check_transition(
        self, step: str, pathspec: str, ds: Any = None, switch: bool = False
    ) -> list[str]:
        return self.checks.check(step, pathspec, ds, switch)

    def chosen_step(self, pathspec: str) -> str:
        return self.checks.chosen_step(pathspec)

    # -- used outside the ops (executor, tests) ------------------------------------------
    def task_datastore(self, pathspec: str, attempt: int | None = None, mode: str = "r") -> Any:
        return self.store.task_datastore(pathspec, attempt, mode)

    def base_argv(self) -> list[str]:
        return self.command.base_argv()

    def step_argv(self, task: TaskOptions) -> list[str]:
        return self.command.step_argv(task)

    def step_env(self, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
        return self.command.step_env(extra_env)

    def launcher_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return self.command.launcher_env(env)

    def run_exit_hook(self, name: str, run_pathspec: str) -> tuple[bool, str]:
        return self.command.run_exit_hook(name, run_pathspec)


def _step_options(
    max_user_code_retries: int,
    extra_env: Mapping[str, str] | None,
    timeout: int | None,
    launcher: str | None,
    ubf_context: str | None,
    decorator_specs: Sequence[str],
) -> StepOptions:
    """The StepOptions record from the keyword arguments the generated op call passes."""
    return StepOptions(
        max_user_code_retries,
        dict(extra_env or {}),
        timeout,
        launcher,
        ubf_context,
        tuple(decorator_specs),
    )
