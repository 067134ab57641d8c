"""The run worker's event writer: step events written by one thread, in order, the same
events as when each is written where it is emitted; failed writes still fail the run."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from dagster import (
    DagsterInstance,
    Failure,
    In,
    Nothing,
    RetryPolicy,
    execute_job,
    job,
    op,
    reconstructable,
)

from dagster_metaflow.runtime import metaflow_executor, run_end
from dagster_metaflow.runtime.event_writer import EventWriter, deferred_writes_enabled
from dagster_metaflow.runtime.supervise import current_control
from dagster_metaflow.runtime.switches import SYNC_EVENTS_VAR as SYNC_VAR


@op
def first(context) -> int:  # type: ignore[no-untyped-def]
    context.log.info("first says hello")
    return 1


@op(retry_policy=RetryPolicy(max_retries=1))
def flaky(context, n: int) -> int:  # type: ignore[no-untyped-def]
    if context.retry_number == 0:
        raise Failure("not yet")
    context.log.info("flaky made it")
    return n + 1


@op
def broken(n: int) -> int:
    raise Failure(f"broken at {n}")


@op(ins={"after": In(Nothing)})
def never() -> None:
    pass


@job(executor_def=metaflow_executor)
def chain() -> None:
    never(after=broken(flaky(first())))


@op
def left(context, n: int) -> int:  # type: ignore[no-untyped-def]
    context.log.info("left")
    return n


@op
def right(n: int) -> int:
    return n


@op
def both(a: int, b: int) -> int:
    return a + b


@job(executor_def=metaflow_executor)
def fan() -> None:
    n = first()
    both(left(n), right(n))


def _events(instance: DagsterInstance, ordered: bool = True) -> list[tuple[str, str | None]]:
    run = instance.get_runs(limit=1)[0]
    records = instance.all_logs(run.run_id)
    stamps = [r.timestamp for r in records]
    if ordered:  # one step at a time: storage order is emission order
        assert stamps == sorted(stamps), "stored out of the order they were emitted in"
    return [
        (r.dagster_event.event_type_value if r.dagster_event else "log", r.step_key)
        for r in records
    ]


def _run_both_ways(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, job_def: Any, ordered: bool
) -> list[list[tuple[str, str | None]]]:
    """The job's event log with every event written in place, then with the writer; the
    writer must have written the four step events itself."""
    writers: list[EventWriter] = []
    enter = EventWriter.__enter__

    def recording_enter(self: EventWriter) -> EventWriter:
        writers.append(self)
        return enter(self)

    monkeypatch.setattr(EventWriter, "__enter__", recording_enter)
    sequences = []
    for sync in ("1", "0"):
        monkeypatch.setenv(SYNC_VAR, sync)
        (tmp_path / sync).mkdir()
        with DagsterInstance.local_temp(str(tmp_path / sync)) as instance:
            execute_job(reconstructable(job_def), instance)
            assert "handle_new_event" not in vars(instance)  # the writer is gone with the run
            sequences.append(_events(instance, ordered))
    assert len(writers) == 1  # not with DAGSTER_METAFLOW_SYNC_EVENTS=1
    step_events = [k for k, _ in sequences[1] if k in ("LOGS_CAPTURED", "STEP_START", "STEP_OUTPUT", "STEP_SUCCESS")]
    assert writers[0].deferred == len(step_events) > 0
    assert not any(t.name == "dagster-metaflow:event-writer" for t in threading.enumerate())
    return sequences


def test_a_run_stores_the_same_events_in_the_same_order_with_the_writer_and_without(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, deferred = _run_both_ways(tmp_path, monkeypatch, chain, ordered=True)
    assert deferred == plain
    kinds = [kind for kind, _step in plain]
    for kind in ("STEP_START", "STEP_SUCCESS", "STEP_UP_FOR_RETRY", "STEP_FAILURE", "log"):
        assert kind in kinds  # the sequence holds deferred and written-in-place events alike


def test_steps_running_at_once_keep_each_step_s_own_order(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, deferred = _run_both_ways(tmp_path, monkeypatch, fan, ordered=False)
    assert sorted(map(str, deferred)) == sorted(map(str, plain))
    for step in ("first", "left", "right", "both"):
        assert [k for k, s in deferred if s == step] == [k for k, s in plain if s == step]


def test_the_writer_applies_to_dagster_s_sqlite_event_log_only(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SYNC_VAR, raising=False)
    with DagsterInstance.local_temp(str(tmp_path)) as sqlite:
        assert deferred_writes_enabled(sqlite)
        monkeypatch.setenv(SYNC_VAR, "1")
        assert not deferred_writes_enabled(sqlite)
    monkeypatch.delenv(SYNC_VAR)
    with DagsterInstance.ephemeral() as in_memory:
        assert not deferred_writes_enabled(in_memory)


STOPPED: list[bool] = []


@op
def quick() -> int:
    return 1


@op
def slow() -> int:
    """Runs until the executor cancels it, as a supervised Metaflow step does."""
    control = current_control.get()
    assert control is not None
    STOPPED.append(control.cancel.wait(30))
    if control.cancel.is_set():
        raise Failure("stopped")
    return 2


@job(executor_def=metaflow_executor)
def racing() -> None:
    quick()
    slow()


@job(executor_def=metaflow_executor)
def lonely() -> None:
    quick()


@pytest.mark.parametrize("job_def", [racing, lonely], ids=["steps-still-running", "last-step"])
def test_a_run_whose_step_event_could_not_be_written_fails_promptly(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, job_def: Any
) -> None:
    """`quick`'s STEP_SUCCESS fails to be written on the writer thread: the executor's loop
    raises it while `slow` still runs (stopped at once, not waited for), or the writer's
    end does after the last step; the run fails with the write's error either way, after
    its end duties (@exit_hook's on_error functions, notifications)."""
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    store = SqliteEventLogStorage.store_event

    def failing_store(self: Any, event: Any) -> None:
        kind = event.dagster_event.event_type_value if event.dagster_event else None
        if event.step_key == "quick" and kind == "STEP_SUCCESS":
            assert threading.current_thread().name == "dagster-metaflow:event-writer"
            raise OSError("disk full at quick's success")
        store(self, event)

    ended: list[bool] = []

    def exit_hooks(job_context: Any, successful: bool) -> Any:
        ended.append(successful)  # the flow's @exit_hook functions would run here
        return iter(())

    monkeypatch.delenv(SYNC_VAR, raising=False)
    monkeypatch.setattr(SqliteEventLogStorage, "store_event", failing_store)
    monkeypatch.setattr(run_end, "run_exit_hooks", exit_hooks)
    STOPPED.clear()
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        began = time.monotonic()
        result = execute_job(reconstructable(job_def), instance)
        took = time.monotonic() - began
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        assert "disk full at quick's success" in str(failure.event_specific_data)
    assert took < 15, took
    assert STOPPED == ([True] if job_def is racing else [])
    assert ended == [False]  # the run's end duties ran once, as for a failed run


class _Instance:
    """The one method the writer wraps, recording what it wrote and from which thread."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.written: list[tuple[str, str]] = []
        self.delay = delay
        self.fail_on = fail_on

    def handle_new_event(self, event: Any, *, batch_metadata: Any = None) -> None:
        time.sleep(self.delay)
        if event.name == self.fail_on:
            raise OSError(f"disk full at {event.name}")
        self.written.append((event.name, threading.current_thread().name))


def _event(name: str, kind: str | None) -> Any:
    dagster_event = None if kind is None else SimpleNamespace(event_type_value=kind)
    return SimpleNamespace(name=name, dagster_event=dagster_event)


def test_an_event_written_in_place_waits_for_the_deferred_ones_before_it() -> None:
    instance = _Instance(delay=0.02)
    with EventWriter(instance):  # type: ignore[arg-type]
        instance.handle_new_event(_event("start", "STEP_START"))
        instance.handle_new_event(_event("hello", None))
        instance.handle_new_event(_event("failure", "STEP_FAILURE"))
        instance.handle_new_event(_event("success", "STEP_SUCCESS"))
    assert [name for name, _ in instance.written] == ["start", "hello", "failure", "success"]
    threads = dict(instance.written)
    assert threads["start"] == threads["success"] == "dagster-metaflow:event-writer"
    assert threads["hello"] == threads["failure"] == threading.current_thread().name
    assert vars(instance) == {"written": instance.written, "delay": 0.02, "fail_on": None}


def test_a_failed_deferred_write_is_raised_by_the_loop_not_by_the_next_step_s_event() -> None:
    """The executor's loop asks every 0.05 s: the worker ends on the failure while its other
    steps still run, and no step is failed for another's event; what follows is written
    in place, nothing dropped."""
    instance = _Instance(fail_on="output")
    raised = []
    with EventWriter(instance) as writer:  # type: ignore[arg-type]
        instance.handle_new_event(_event("output", "STEP_OUTPUT"))
        writer.flush()
        instance.handle_new_event(_event("other start", "STEP_START"))  # not raised here
        instance.handle_new_event(_event("other failure", "STEP_FAILURE"))
        deadline = time.monotonic() + 5
        while not raised and time.monotonic() < deadline:
            try:
                writer.raise_failure()
            except OSError as error:
                raised.append(str(error))
            time.sleep(0.01)
        writer.raise_failure()  # once
    assert raised == ["disk full at output"]  # and the block's end raised nothing more
    assert instance.written == [
        ("other start", threading.current_thread().name),  # in place after the failure
        ("other failure", threading.current_thread().name),
    ]


def test_a_failed_deferred_write_nobody_asked_about_fails_the_block() -> None:
    instance = _Instance(fail_on="success")
    with pytest.raises(OSError, match="disk full at success"):
        with EventWriter(instance):  # type: ignore[arg-type]
            instance.handle_new_event(_event("success", "STEP_SUCCESS"))
    assert "handle_new_event" not in vars(instance)


def test_a_log_message_is_written_in_place_so_dagster_handles_its_failure() -> None:
    """Dagster reports a log message's failed write as an engine event, and that event's
    own failed write raises: how a run worker whose database vanished ends."""
    instance = _Instance(fail_on="hello", delay=0.02)
    with EventWriter(instance):  # type: ignore[arg-type]
        instance.handle_new_event(_event("start", "STEP_START"))
        with pytest.raises(OSError, match="disk full at hello"):
            instance.handle_new_event(_event("hello", None))
    assert instance.written == [("start", "dagster-metaflow:event-writer")]


class _Subscriber(_Instance):
    """Writing `start` writes another event from inside the write (a subscriber, a logger
    that reaches the event log)."""

    def handle_new_event(self, event: Any, *, batch_metadata: Any = None) -> None:
        if event.name == "start":
            self.writer.handle(_event("nested", "ENGINE_EVENT"))
        super().handle_new_event(event, batch_metadata=batch_metadata)


def test_an_event_written_from_inside_a_write_does_not_wait_for_itself() -> None:
    instance = _Subscriber()
    done = threading.Event()

    def run() -> None:
        with EventWriter(instance) as writer:  # type: ignore[arg-type]
            instance.writer = writer  # type: ignore[attr-defined]
            instance.handle_new_event(_event("start", "STEP_START"))
            instance.handle_new_event(_event("failure", "STEP_FAILURE"))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "the writer waited for itself"
    assert [name for name, _ in instance.written] == ["nested", "start", "failure"]


def test_an_instance_that_already_has_a_writer_keeps_it() -> None:
    instance = _Instance()
    with EventWriter(instance) as outer:  # type: ignore[arg-type]
        with EventWriter(instance):  # type: ignore[arg-type]
            assert vars(instance)["handle_new_event"] == outer.handle
        assert vars(instance)["handle_new_event"] == outer.handle
        instance.handle_new_event(_event("start", "STEP_START"))
    assert [name for name, _ in instance.written] == ["start"]
