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

from dagster_metaflow.runtime import metaflow_executor
from dagster_metaflow.runtime.event_writer import SYNC_VAR, EventWriter


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


def _events(instance: DagsterInstance) -> list[tuple[str, str | None]]:
    run = instance.get_runs(limit=1)[0]
    records = instance.all_logs(run.run_id)
    stamps = [r.timestamp for r in records]
    assert stamps == sorted(stamps), "stored out of the order they were emitted in"
    return [
        (r.dagster_event.event_type_value if r.dagster_event else "log", r.step_key)
        for r in records
    ]


def test_a_run_stores_the_same_events_in_the_same_order_with_the_writer_and_without(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequences = []
    for sync in ("1", "0"):
        monkeypatch.setenv(SYNC_VAR, sync)
        (tmp_path / sync).mkdir()
        with DagsterInstance.local_temp(str(tmp_path / sync)) as instance:
            result = execute_job(reconstructable(chain), instance)
            assert not result.success
            assert "handle_new_event" not in vars(instance)  # the writer is gone with the run
            sequences.append(_events(instance))
    plain, deferred = sequences
    assert deferred == plain
    kinds = [kind for kind, _step in plain]
    for kind in ("STEP_START", "STEP_SUCCESS", "STEP_UP_FOR_RETRY", "STEP_FAILURE", "log"):
        assert kind in kinds  # the sequence holds deferred and written-in-place events alike
    assert not any(t.name == "dagster-metaflow:event-writer" for t in threading.enumerate())


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


def test_a_failed_deferred_write_is_raised_once_from_the_next_event() -> None:
    instance = _Instance(fail_on="output")
    with EventWriter(instance):  # type: ignore[arg-type]
        instance.handle_new_event(_event("output", "STEP_OUTPUT"))
        with pytest.raises(OSError, match="disk full at output"):
            instance.handle_new_event(_event("failure", "STEP_FAILURE"))
        instance.handle_new_event(_event("run failure", "PIPELINE_FAILURE"))
    assert [name for name, _ in instance.written] == ["run failure"]


def test_a_failed_deferred_write_fails_the_block_that_wrote_nothing_after_it() -> None:
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


def test_an_instance_that_already_has_a_writer_keeps_it() -> None:
    instance = _Instance()
    with EventWriter(instance) as outer:  # type: ignore[arg-type]
        with EventWriter(instance):  # type: ignore[arg-type]
            assert vars(instance)["handle_new_event"] == outer.handle
        assert vars(instance)["handle_new_event"] == outer.handle
        instance.handle_new_event(_event("start", "STEP_START"))
    assert [name for name, _ in instance.written] == ["start"]


def test_a_failed_deferred_write_is_raised_by_a_loop_that_writes_nothing() -> None:
    """The executor's loop asks every 0.05 s: a run whose other steps are all still running
    ends on the failure, as it did when the write raised where it was made."""
    instance = _Instance(fail_on="success")
    with pytest.raises(OSError, match="disk full at success"):
        with EventWriter(instance) as writer:  # type: ignore[arg-type]
            instance.handle_new_event(_event("success", "STEP_SUCCESS"))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                writer.raise_failure()
                time.sleep(0.01)
    assert instance.written == []
