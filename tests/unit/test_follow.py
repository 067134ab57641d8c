"""`trigger --wait` sees its run's end as soon as the worker it forked closes the run's
body pipe (`run_launcher.take_run_body_end`), not at its next poll; without the pipe, or
once it has closed, it polls as before."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from dagster_metaflow import runs
from dagster_metaflow.errors import DagsterMetaflowException


def _started_run(instance: DagsterInstance) -> DagsterRun:
    run = DagsterRun(job_name="job", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED)
    instance.add_run(run)
    return run


def _caller() -> runs.Caller:
    return runs.Caller(echo=lambda *a, **k: None, script="flow.py", total_steps=1, metadata="")


def _end_later(instance: DagsterInstance, run: DagsterRun, close_fd: int | None) -> None:
    def end() -> None:
        time.sleep(0.3)
        instance.report_run_failed(run, message="ended by the test")
        if close_fd is not None:
            os.close(close_fd)  # what the worker does once the run's body returned

    threading.Thread(target=end, daemon=True).start()


def _follow_to_its_end(tmp_path: Path, with_pipe: bool) -> float:
    """Follow a run the test ends after 0.3 s (closing the pipe as the worker would);
    how long `follow` took to see it."""
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        run = _started_run(instance)
        read_end, write_end = os.pipe() if with_pipe else (None, None)
        _end_later(instance, run, write_end)
        t0 = time.monotonic()
        with pytest.raises(DagsterMetaflowException, match="FAILURE"):
            runs.follow(instance, run.run_id, "Flow/1", _caller(), read_end)
        if read_end is not None:
            with pytest.raises(OSError):
                os.fstat(read_end)  # closed by follow
        return time.monotonic() - t0


def test_the_end_is_seen_when_the_worker_closes_the_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "poll_interval", lambda elapsed: 5.0)
    assert _follow_to_its_end(tmp_path, with_pipe=True) < 2.5  # not the 5 s poll


def test_without_the_pipe_the_run_is_polled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "poll_interval", lambda elapsed: 0.05)
    assert _follow_to_its_end(tmp_path, with_pipe=False) < 2.5


def test_a_pipe_closed_before_the_run_ended_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipe is read once: a worker that closed it early (died) does not make `follow`
    spin on an always-readable pipe."""
    monkeypatch.setattr(runs, "poll_interval", lambda elapsed: 0.05)
    reads: list[float] = []
    real = DagsterInstance.get_records_for_run

    def counted(self: DagsterInstance, *args: object, **kwargs: object) -> object:
        reads.append(time.monotonic())
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DagsterInstance, "get_records_for_run", counted)
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        run = _started_run(instance)
        read_end, write_end = os.pipe()
        os.close(write_end)
        _end_later(instance, run, None)
        with pytest.raises(DagsterMetaflowException, match="FAILURE"):
            runs.follow(instance, run.run_id, "Flow/1", _caller(), read_end)
    assert len(reads) < 20  # ~0.3 s at one read per 0.05 s, not a busy loop


def _event(kind: str, key: str, **metadata: Any) -> Any:
    """A step event as RunProgress reads it (the e2e shape and random-flow tests feed it real
    runs' events and compare the count with native runs)."""
    from dagster import MetadataValue

    values = {k: MetadataValue.int(v) if isinstance(v, int) else MetadataValue.text(v) for k, v in metadata.items()}
    return SimpleNamespace(step_key=key, event_type_value=kind, step_output_data=SimpleNamespace(metadata=values))


def _done(*ops: tuple[str, list[dict[str, Any]]]) -> runs.RunProgress:
    """Progress after each op started, put out its outputs (each with its metadata), and succeeded."""
    progress = runs.RunProgress(total=len(ops))
    for key, outputs in ops:
        progress.add(_event("STEP_START", key))
        for metadata in outputs:
            progress.add(_event("STEP_OUTPUT", key, **metadata))
        progress.add(_event("STEP_SUCCESS", key))
    return progress


def test_progress_counts_the_metaflow_tasks_ops_ran() -> None:
    not_taken = {"branch": "not taken"}
    progress = _done(
        ("F_steps.op_start", [{"pathspec": "r/start/1"}]),
        ("F_steps.op_a[0]", [not_taken]),  # a branch not taken: no task
        ("F_steps.op_sw[0]", [{}, not_taken]),  # a switch that ran, one exit not taken
        ("F_steps.op_lp[1]", [{"iterations": 3}, not_taken]),  # a loop: 3 tasks
        ("F_steps.op_fe", [not_taken]),  # a foreach on a branch not taken: one marker child
        ("F_steps.chunk_b[tasks_0_to_19]", [{"tasks": 20}]),
        ("F_steps.op_train", [{"tasks": 4}]),  # a @parallel control task and 3 workers
        ("F_steps.fanout_c", [{}, {}]),  # the nested foreach's collect: no task of its own
        ("F_steps.op_end", []),  # an op without outputs counts one task
    )
    assert progress.tasks_done == 1 + 1 + 3 + 20 + 4 + 1
    assert progress.line() == "steps done 8/9, tasks done 30"
    assert not progress.running and not progress.failed


def test_progress_ignores_events_it_does_not_tell() -> None:
    progress = runs.RunProgress(total=1)
    progress.add(_event("ASSET_MATERIALIZATION_PLANNED", "F_steps.op_end"))
    progress.add(_event("STEP_UP_FOR_RETRY", "F_steps.op_end"))
    progress.add(None)
    assert progress.line() == "steps done 0/1, tasks done 0"
