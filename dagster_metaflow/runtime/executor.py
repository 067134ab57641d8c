"""A Dagster executor that runs each op in a thread of the run worker.

Every op of a compiled flow only supervises a `python flow.py step` subprocess, so it
needs no interpreter of its own. Dagster's multiprocess executor pays ~1-3 s per op to
start one; this executor starts a thread (milliseconds) and keeps Dagster's semantics:
per-step events, retries with delay, skips, hooks, concurrency limits, per-step compute
logs (each step's child output is written to its own log stream, not to the shared
process stdout), run termination forwarded to every running step, and the flow-level
`--workflow-timeout` enforced without the Dagster daemon.

The loop follows `dagster._core.executor.multiprocess.MultiprocessExecutor.execute`;
the per-step body is `dagster_event_sequence_for_step`, as in the in-process executor.
The private Dagster APIs this needs come from `dagster_metaflow._dagster_private`.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import ExitStack
from typing import Any

from dagster import (
    DagsterEvent,
    DagsterExecutionInterruptedError,
    Executor,
    Field,
    InitExecutorContext,
    Int,
    Noneable,
    StepExecutionContext,
    executor,
)

from .._dagster_private import (
    LOG_RECORD_EVENT_ATTR,
    CapturedLogContext,
    ComputeIOType,
    EngineEventData,
    ExecuteRunWithPlanIterable,
    ExecutionPlan,
    InstanceConcurrencyContext,
    PlanExecutionContext,
    PlanExecutionContextManager,
    PlanOrchestrationContext,
    RetryMode,
    dagster_event_sequence_for_step,
    get_retries_config,
    known_state_for_step,
    serializable_error_info_from_exc_info,
    trigger_hook,
)
from .event_writer import EventWriter, deferred_writes_enabled
from .failures import TAG_ERROR, TAG_TIMED_OUT
from .notify import announce_run_end, watchdog_env
from .run_end import RunOutcome, ending_on_error, finish_run, run_exit_hooks, tag_outcome
from .supervise import StepControl, current_control
from .worker import watched

DEFAULT_MAX_CONCURRENT = 16


class _StepDone:
    """Queue marker: the thread running one attempt (`token`) of `step_key` has finished."""

    __slots__ = ("token", "step_key", "events")

    def __init__(self, token: int, step_key: str, events: list[DagsterEvent]) -> None:
        self.token = token
        self.step_key = step_key
        self.events = events


class _StepLogs:
    """Per-step compute log streams, written line by line by the step's supervisor."""

    def __init__(self, job_context: PlanExecutionContext, step_key: str) -> None:
        manager = job_context.instance.compute_log_manager
        self.manager = manager
        self.log_key = manager.build_log_key_for_run(job_context.run_id, _file_key(step_key))
        self._stack = ExitStack()
        self._streams: dict[str, Any] = {}
        self._lock = threading.Lock()
        for name, io_type in (("stdout", ComputeIOType.STDOUT), ("stderr", ComputeIOType.STDERR)):
            self._streams[name] = self._stack.enter_context(
                manager.open_log_stream(self.log_key, io_type)
            )

    def write(self, stream: str, line: bytes) -> None:
        f = self._streams.get(stream)
        if f is None:
            return
        with self._lock:
            try:
                f.write(line.decode("utf-8", errors="replace"))
                f.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self._stack.close()
        complete = getattr(self.manager, "complete_artifact_path", None)
        if complete is not None:  # LocalComputeLogManager marks finished captures this way
            try:
                path = complete(self.log_key)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "a"):
                    pass
            except OSError:
                pass


class _UnreadEvents(logging.Filter):
    """Keeps a step's input/IO-manager bookkeeping events out of the event log.

    LOADED_INPUT, STEP_INPUT and HANDLED_OUTPUT say that a task pathspec string was passed
    from one op to the next; nothing in Dagster reads them back (re-execution and resume
    read STEP_OUTPUT), and they were 45% of a wide foreach's event log (a join of N tasks
    logged N LOADED_INPUTs). Only this executor's steps are filtered."""

    DROP = frozenset({"LOADED_INPUT", "STEP_INPUT", "HANDLED_OUTPUT"})

    def filter(self, record: logging.LogRecord) -> bool:
        event = getattr(record, LOG_RECORD_EVENT_ATTR, None)
        return event is None or event.event_type_value not in self.DROP


_UNREAD_EVENTS = _UnreadEvents()


def _file_key(step_key: str) -> str:
    # step keys of mapped ops look like `op_body[3_1]`; keep file names tame
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in step_key)


def _run_step_in_thread(
    token: int,
    step_context: StepExecutionContext,
    control: StepControl,
    logs: _StepLogs | None,
    out: queue.Queue[DagsterEvent | _StepDone],
) -> None:
    current_control.set(control)
    events: list[DagsterEvent] = []
    try:
        for event in dagster_event_sequence_for_step(step_context):
            events.append(event)
            out.put(event)
    except BaseException:  # never lose a step: report the crash as an engine error
        try:
            err = serializable_error_info_from_exc_info(sys.exc_info())
            ev = DagsterEvent.engine_event(
                step_context,
                f"Thread executor: step {step_context.step.key} crashed",
                EngineEventData.engine_error(err),
            )
            out.put(ev)
        except BaseException:
            pass
    finally:
        if logs is not None:
            logs.close()
        out.put(_StepDone(token, step_context.step.key, events))


def threaded_plan_iterator(
    job_context: PlanExecutionContext,
    execution_plan: ExecutionPlan,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    workflow_timeout: float | None = None,
    resumed: bool = False,
) -> Iterator[DagsterEvent]:
    """Execute the plan's steps concurrently in threads, yielding Dagster events in order.
    `resumed`: a new worker of a run whose worker died; the plan continues from the run's
    event log, and the steps that were in flight run again."""
    started = time.monotonic()
    from .._dagster_sqlite import keep_sqlite_connections
    from .flow import warm_up_flows
    from .heap import exit_without_collecting

    threading.Thread(target=warm_up_flows, name="dagster-metaflow:warm-up", daemon=True).start()
    exit_without_collecting()  # `dagster job execute`, `dagster api execute_run`
    keep_sqlite_connections()  # this process runs the run: it writes most of its events
    steps = _run_steps(job_context, execution_plan, max_concurrent, workflow_timeout, resumed, started)
    run = yield from ending_on_error(job_context, steps)

    from .flow import request_spare_zygote
    from .zygote import POOL

    POOL.close()  # the run is over: don't keep forked interpreters around
    try:
        yield from run.conclude(execution_plan)
    finally:
        request_spare_zygote()  # for the job's next run, if a worker zygote forked this worker


def _run_steps(
    job_context: PlanExecutionContext,
    execution_plan: ExecutionPlan,
    max_concurrent: int,
    workflow_timeout: float | None,
    resumed: bool,
    started: float,
) -> Generator[DagsterEvent, None, _ThreadedRun]:
    """Run the plan's steps under the run's watchdog, its step events written by the event
    writer; returns the run, whose conclusion is the caller's."""
    with ExitStack() as stack:
        stack.enter_context(
            watched(
                job_context.instance, job_context.dagster_run, resumed, watchdog_env(job_context)
            )
        )
        # left before the watchdog stops: its last writes are still watched
        instance = job_context.instance
        writer = EventWriter(instance) if deferred_writes_enabled(instance) else None
        if writer is not None:
            stack.enter_context(writer)
        concurrency = stack.enter_context(
            InstanceConcurrencyContext(job_context.instance, job_context.dagster_run)
        )
        active = stack.enter_context(
            execution_plan.start(
                retry_mode=job_context.retry_mode,
                instance_concurrency_context=concurrency,
                step_dependency_config=job_context.step_dependency_config,
            )
        )
        run = _ThreadedRun(job_context, active, max_concurrent, workflow_timeout, started, writer)
        if resumed:
            yield run.resume()
        yield from run.loop()
    return run


class _ThreadedRun:
    """The executor loop of one run: the threads of the running steps, the events they
    queue, and whether the run is stopping (terminated, or its workflow timeout exceeded)."""

    def __init__(
        self,
        job_context: PlanExecutionContext,
        active: Any,
        max_concurrent: int,
        workflow_timeout: float | None,
        started: float,
        writer: EventWriter | None = None,
    ) -> None:
        self.job_context = job_context
        self.writer = writer
        self.active = active
        self.max_concurrent = max_concurrent
        self.workflow_timeout = workflow_timeout
        self.started = started
        self.events: queue.Queue[DagsterEvent | _StepDone] = queue.Queue()
        # keyed by a per-attempt token: a retried step reuses its step key while the thread
        # of the failed attempt may still be reporting its last events
        self.running: dict[int, tuple[threading.Thread, StepControl, StepExecutionContext]] = {}
        self.tokens = itertools.count()
        self.stopping = False
        self.timed_out = False
        self.canceled = _CancelWatch(job_context)
        self.outcome = RunOutcome()
        self.in_flight: list[Any] = []

    def resume(self) -> DagsterEvent:
        """Continue from the run's event log; the lost worker's steps run first."""
        self.in_flight = _rebuild(self.job_context, self.active, self.outcome)
        return DagsterEvent.engine_event(
            self.job_context,
            f"Resuming the run in a new worker: {len(self.outcome.succeeded)} steps already done; "
            f"running again the steps the lost worker had in flight: "
            f"{', '.join(s.key for s in self.in_flight) or 'none'}",
            EngineEventData(),
        )

    def loop(self) -> Iterator[DagsterEvent]:
        """Until every step is over (or, once stopping, every running thread has ended):
        start the ready steps, relay their events, and stop them when the run must stop."""
        try:
            while (not self.stopping and not self.active.is_complete) or self.running:
                if self.writer is not None:  # a step event that could not be written
                    self.writer.raise_failure()
                yield from self._check_interrupts()
                yield from self._start_ready_steps()
                try:
                    item = self.events.get(timeout=0.05)
                except queue.Empty:
                    if not self.running and not self.stopping:
                        self.active.sleep_til_ready()
                    continue
                yield from self._relay(item)
                yield from self.active.plan_events_iterator(self.job_context)
        except BaseException:
            for _thread, control, _ctx in self.running.values():
                control.cancel.set()
            for thread, _control, _ctx in list(self.running.values()):
                thread.join(timeout=30)
            raise

    def _check_interrupts(self) -> Iterator[DagsterEvent]:
        """On termination or the workflow timeout, cancel every running step (once)."""
        active = self.active
        interrupted = active.check_for_interrupts() or self.canceled.requested()
        timeout = self.workflow_timeout
        if not self.stopping and timeout and time.monotonic() - self.started > timeout:
            self.timed_out = interrupted = True
        if interrupted and not self.stopping:
            reason = (
                f"workflow timeout of {timeout:g}s exceeded" if self.timed_out else "run terminated"
            )
            yield DagsterEvent.engine_event(
                self.job_context,
                f"Thread executor: {reason} - stopping running steps",
                EngineEventData.interrupted(
                    sorted({ctx.step.key for _t, _c, ctx in self.running.values()})
                ),
            )
            self.stopping = True
            active.mark_interrupted()
            for _thread, control, _ctx in self.running.values():
                control.reason = reason
                control.cancel.set()

    def _start_ready_steps(self) -> Iterator[DagsterEvent]:
        """Start a thread for every step that may run now, within `max_concurrent`."""
        active = self.active
        while not self.stopping:
            room = self.max_concurrent - len(self.running)
            if room <= 0 and not self.in_flight:
                # asking Dagster anyway sorts every ready step (all of a wide foreach's
                # tasks) to return none: once per event, quadratic in the width
                break
            steps = active.get_steps_to_execute(limit=max(room, 0))
            yield from active.concurrency_event_iterator(self.job_context)
            if self.in_flight:  # a resumed run: the lost worker's steps first
                steps, self.in_flight = [*self.in_flight, *steps], []
            if not steps:
                break
            for step in steps:
                yield from self._start_step(step)

    def _start_step(self, step: Any) -> Iterator[DagsterEvent]:
        """Open the step's compute logs and run it in a new thread."""
        job_context = self.job_context
        step_context = job_context.for_step(step, known_state_for_step(self.active, step))
        step_context.log.addFilter(_UNREAD_EVENTS)
        logs: _StepLogs | None
        try:
            logs = _StepLogs(job_context, step.key)
            yield DagsterEvent.capture_logs(
                job_context,
                [step.key],
                logs.log_key,
                _log_context(logs.log_key),
            )
        except Exception:
            logs = None
        control = StepControl(sink=logs.write if logs else None)
        token = next(self.tokens)
        thread = threading.Thread(
            target=_run_step_in_thread,
            args=(token, step_context, control, logs, self.events),
            name=f"dagster-metaflow:{step.key}",
            daemon=True,
        )
        self.running[token] = (thread, control, step_context)
        thread.start()

    def _relay(self, item: DagsterEvent | _StepDone) -> Iterator[DagsterEvent]:
        """Yield `item` and every event already queued after it, ending finished steps."""
        active = self.active
        while True:
            if isinstance(item, _StepDone):
                _thread, _control, step_context = self.running.pop(item.token)
                # an immediate retry may already be running under the same key; its
                # own completion will be verified when its thread ends
                if not any(c.step.key == item.step_key for _t, _c, c in self.running.values()):
                    active.verify_complete(self.job_context, item.step_key)
                yield from trigger_hook(step_context, item.events)
            else:
                yield item
                active.handle_event(item)
                self.outcome.note(item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break

    def conclude(self, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        """The run's end: exit hooks then an interruption error if it stopped early, else
        `finish_run`."""
        if self.timed_out or self.stopping:
            yield from run_exit_hooks(self.job_context, successful=False)
            if self.timed_out:
                why = f"run exceeded its workflow timeout of {self.workflow_timeout:g} seconds"
                tag_outcome(self.job_context, {TAG_ERROR: why, TAG_TIMED_OUT: "true"})
                yield from announce_run_end(self.job_context, False, why)
                raise DagsterExecutionInterruptedError(
                    f"Run exceeded its workflow timeout of {self.workflow_timeout:g} seconds"
                )
            raise DagsterExecutionInterruptedError()
        yield from finish_run(self.job_context, execution_plan, self.outcome)


def _rebuild(job_context: PlanExecutionContext, active: Any, outcome: RunOutcome) -> list[Any]:
    """Replay the run's event log into the active execution (and `outcome`), as Dagster's
    step-delegating executor does on resume; returns the steps in flight when the worker died."""
    records = job_context.instance.all_logs(job_context.run_id)
    events = [r.dagster_event for r in records if r.dagster_event is not None]
    for event in events:
        outcome.note(event)
    # skips are the active execution's own conclusions: it draws them again
    return list(active.rebuild_from_events([e for e in events if not e.is_step_skipped]))


class _CancelWatch:
    """Notices a termination recorded in the instance (CANCELING/CANCELED), whoever asked:
    the UI, `dagster-metaflow terminate`, or a run launcher that could not reach this process."""

    INTERVAL = 1.0

    def __init__(self, job_context: PlanExecutionContext) -> None:
        self._ctx = job_context
        self._next = time.monotonic() + self.INTERVAL

    def requested(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.INTERVAL
        from dagster import DagsterRunStatus

        try:
            run = self._ctx.instance.get_run_by_id(self._ctx.run_id)
        except Exception:
            return False
        return run is not None and run.status in (
            DagsterRunStatus.CANCELING,
            DagsterRunStatus.CANCELED,
        )


def _log_context(log_key: Sequence[str]) -> Any:
    return CapturedLogContext(log_key=log_key)


class ThreadedExecutor(Executor):
    """Runs every step in a thread of the run worker (see module docstring)."""

    def __init__(
        self,
        retries: RetryMode,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        workflow_timeout: float | None = None,
    ) -> None:
        if not isinstance(retries, RetryMode):
            raise TypeError(f"retries must be a RetryMode, got {retries!r}")
        self._retries = retries
        self._max_concurrent = max(1, int(max_concurrent))
        self._workflow_timeout = workflow_timeout

    @property
    def retries(self) -> RetryMode:
        return self._retries

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        yield DagsterEvent.engine_event(
            plan_context,
            f"Executing steps in threads of process {os.getpid()} "
            f"(max_concurrent={self._max_concurrent})",
            event_specific_data=EngineEventData.in_process(
                os.getpid(), execution_plan.step_keys_to_execute
            ),
        )
        max_concurrent = self._max_concurrent
        workflow_timeout = self._workflow_timeout
        resumed = bool(getattr(plan_context, "resume_from_failure", False))

        def iterator(
            job_context: PlanExecutionContext, execution_plan: ExecutionPlan
        ) -> Iterator[DagsterEvent]:
            return threaded_plan_iterator(
                job_context, execution_plan, max_concurrent, workflow_timeout, resumed
            )

        yield from iter(
            ExecuteRunWithPlanIterable(
                execution_plan=plan_context.execution_plan,
                iterator=iterator,
                execution_context_manager=PlanExecutionContextManager(
                    job=plan_context.job,
                    retry_mode=plan_context.retry_mode,
                    execution_plan=plan_context.execution_plan,
                    run_config=plan_context.run_config,
                    dagster_run=plan_context.dagster_run,
                    instance=plan_context.instance,
                    raise_on_error=plan_context.raise_on_error,
                    output_capture=plan_context.output_capture,
                ),
            )
        )


@executor(
    name="metaflow_threads",
    config_schema={
        "max_concurrent": Field(
            Int, default_value=DEFAULT_MAX_CONCURRENT, description="Steps running at once."
        ),
        "workflow_timeout": Field(
            Noneable(Int),
            default_value=None,
            description="Seconds after which the run is stopped (dagster/max_runtime).",
        ),
        "retries": get_retries_config(),
    },
)
def metaflow_executor(init_context: InitExecutorContext) -> ThreadedExecutor:
    """Thread-per-step executor for compiled Metaflow flows (default of generated jobs)."""
    cfg = init_context.executor_config
    return ThreadedExecutor(
        retries=RetryMode.from_config(cfg["retries"]),  # type: ignore[arg-type]
        max_concurrent=cfg["max_concurrent"],  # type: ignore[arg-type]
        workflow_timeout=cfg.get("workflow_timeout"),  # type: ignore[arg-type]
    )
