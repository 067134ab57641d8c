"""What an op does to run its Metaflow task: place its inputs, clone it from the origin run
(resume), reuse it after a lost run worker, or run attempts of it; then show it on the op."""

from __future__ import annotations

import os
import time
from dataclasses import replace

from dagster import Failure, OpExecutionContext

from ..step_decorators import REMOTE_COMPUTE_DECORATORS
from ..task_options import StepOptions, TaskOptions
from .attempt import Attempts
from .command import StepCommand
from .ids import is_ubf_control, not_taken, not_taken_metadata, path_sort_key, taken
from .prepare import RunPreparation
from .process import announce
from .resume import Origin, in_run, origin_of
from .taskmeta import TaskMetadata
from .taskstore import TaskStore
from .transitions import Transitions
from .worker import RECOVERING_VAR

UBF_CONTROL = "ubf_control"


class StepRunner:
    """Runs the tasks of one flow's ops."""

    def __init__(
        self,
        store: TaskStore,
        command: StepCommand,
        meta: TaskMetadata,
        checks: Transitions,
        prep: RunPreparation,
        attempts: Attempts,
    ) -> None:
        self.store = store
        self.command = command
        self.meta = meta
        self.checks = checks
        self.prep = prep
        self.attempts = attempts

    def run(
        self,
        context: OpExecutionContext,
        task: TaskOptions,
        options: StepOptions,
        show: bool = True,
    ) -> str:
        """Run one Metaflow task to completion; return its pathspec `run/step/task`.

        `task.input_paths` are the op's upstream values as received; `options` the step's;
        `show`: put the task on the op's output (False: the op runs several tasks)."""
        pathspec = task.pathspec
        # "~<pathspec>" comes from a branch not taken (ids.NOT_TAKEN);
        # inputs reused from a parent run (Dagster re-execution) were cloned into this run
        paths = [in_run(p, task.run_id) for p in task.input_paths if taken(p)]
        if not paths:
            announce(
                f"[dagster-metaflow] branch not taken: no Metaflow task for step {task.step!r}\n"
            )
            if show and _single_output(context):
                context.add_output_metadata(not_taken_metadata())
            return not_taken(pathspec)
        task = self._placed(task, paths)
        origin = origin_of(context)
        if (
            origin is not None
            and origin.may_clone(task.step)
            and self._cloned(context, task, origin, show)
        ):
            return pathspec
        if os.environ.get(RECOVERING_VAR):  # a new worker of a run whose worker died
            if self.store.succeeded(pathspec):  # finished before the worker died: not run again
                announce(
                    f"[dagster-metaflow] task {pathspec} finished before the run worker was lost\n"
                )
                self.finish(context, task.step, pathspec, show=show)
                return pathspec
            retry, max_retries = self.store.fresh_attempt(
                pathspec, task.retry_count, task.max_user_code_retries
            )
            task = replace(task, retry_count=retry, max_user_code_retries=max_retries)
        result = self.attempts.run(
            context, self._to_launch(context, task, origin, options), options
        )
        self.finish(context, task.step, pathspec, result.duration, show=show)
        return pathspec

    def run_until_done(
        self,
        context: OpExecutionContext,
        task: TaskOptions,
        options: StepOptions,
        retry: tuple[int, int | None],
        what: str,
        show: bool = True,
    ) -> int:
        """Attempts of one task, made by the op itself (a loop's iteration, a chunk's task),
        until one succeeds; `retry`: (@retry's and @catch's retries, delay). Picks up after
        the attempts already made (an op started again). Returns the attempts made here."""
        max_retries, retry_delay = retry
        attempt = self.store.attempts_made(task.pathspec)
        made = 0
        while not self.store.succeeded(task.pathspec):
            made += 1
            try:
                self.run(context, replace(task, retry_count=attempt), options, show=show)
                break
            except Failure as exc:
                if attempt >= max_retries or not exc.allow_retries:
                    raise
                context.log.warning(
                    f"{what} attempt {attempt} failed; retrying"
                    f"{f' in {retry_delay}s' if retry_delay else ''}"
                )
                if retry_delay:
                    time.sleep(retry_delay)
                attempt += 1
        return made

    def _placed(self, task: TaskOptions, paths: list[str]) -> TaskOptions:
        """The task with its inputs in graph order, an unbounded foreach's control tasks
        replaced by the tasks they started, and its own control role when it has one."""
        ubf_context = task.ubf_context
        if (
            ubf_context is None
            and is_ubf_control(task.task_id)
            and not any(map(is_ubf_control, paths))
        ):
            ubf_context = UBF_CONTROL  # the first step of an unbounded foreach
        # the join of an unbounded foreach joins the tasks its control task started, in the
        # control task's order (their ids share one index path)
        paths = self.store.ubf_mappers(sorted(paths, key=path_sort_key), task.run_id)
        return replace(task, input_paths=tuple(paths), ubf_context=ubf_context)

    def _cloned(
        self, context: OpExecutionContext, task: TaskOptions, origin: Origin, show: bool
    ) -> bool:
        """Resume: clone the origin run's task (a control task with its mapper tasks, as
        natively) when it succeeded there; False when it must run."""
        source = f"{origin.run_id}/{task.step}/{task.task_id}"
        if not self.store.succeeded(source):
            return False
        tags = self.prep.run_tags(context, task.tags)
        self.prep.clone_task(context, source, task.pathspec, tags=tags)
        if task.ubf_context == UBF_CONTROL:
            for mapper in self.store.control_mappers(task.pathspec, origin.run_id):
                if mapper != source:
                    self.prep.clone_task(context, mapper, in_run(mapper, task.run_id), tags=tags)
        self.finish(context, task.step, task.pathspec, show=show)
        return True

    def _to_launch(
        self,
        context: OpExecutionContext,
        task: TaskOptions,
        origin: Origin | None,
        options: StepOptions,
    ) -> TaskOptions:
        """The attempt's options as its command needs them: the run's tags, the origin run,
        a @parallel control task's worker count, a launched task's code package."""
        if task.launcher in REMOTE_COMPUTE_DECORATORS and not self.command.package:
            raise Failure(
                description=f"step {task.step!r} runs on @{task.launcher} from the deployment's code package, "
                f"which this run cannot find: run `python {os.path.basename(self.command.source_path)} "
                "dagster create` again"
            )
        parallel_control = options.ubf_context == UBF_CONTROL  # @parallel (compiled in)
        return replace(
            task,
            tags=tuple(self.prep.run_tags(context, task.tags)),
            clone_run_id=origin.run_id if origin is not None else None,
            num_parallel=self.store.num_parallel(task.input_paths[0]) if parallel_control else None,
        ).with_package(self.command.package if task.launcher else None)

    def finish(
        self,
        context: OpExecutionContext,
        step: str,
        pathspec: str,
        duration: float | None = None,
        show: bool = True,
    ) -> None:
        """After a task succeeded: check its transition (a switch's is checked where its choice
        is read) and show the task on the op's output, from one datastore read."""
        ds = self.checks.check_finished(step, pathspec)
        if show and _single_output(context):
            context.add_output_metadata(self.meta.of_task(pathspec, ds, duration=duration))


def _single_output(context: OpExecutionContext) -> bool:
    try:
        return len(context.op_def.output_defs) == 1 and not context.op_def.output_defs[0].is_dynamic
    except Exception:
        return False
