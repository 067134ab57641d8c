"""`trigger --wait` sees its run's end as soon as the worker it forked closes the run's
body pipe (`run_launcher.take_run_body_end`), not at its next poll; without the pipe, or
once it has closed, it polls as before."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

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
