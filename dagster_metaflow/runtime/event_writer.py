"""A run's step events written by one thread of the run worker, in order, off the steps' path.

Dagster writes every event where it is emitted: a row committed to the run's SQLite
database with its fsync and WAL checkpoint (1.5-3 ms), before the emitting thread goes on.
Four such writes per step (captured logs, start, output, success) sat between one Metaflow
task's end and the next one's start, ~10 ms of every step of a linear flow.

While our executor runs a run, the step events nobody in the run worker reads back
(`DEFERRED`) go to one writer thread, which writes them in the order they were emitted.
Every other event (a failure, a retry, a skip, an asset, a hook, a log message, the run's
own events) first waits until everything queued is written, then is written by the thread
that emitted it, as before: where Dagster handles a failed write itself (a log message's
is reported as an engine event, whose own failure raises), it still does. So the event
log holds the same events in the same order, each with the timestamp of its emission; a
reader in another process sees a step event a few milliseconds later.

What changes, and is accepted:
- A run worker killed with events still queued loses them: those of the last few
  milliseconds, as a worker killed between a task's end and its events' writes always
  could. What is lost is always the end of the queue, so the log is what a worker killed
  a few milliseconds earlier would have left. The watchdog fails the run, and a resumed
  worker finds those tasks as it finds any whose events were lost: done in Metaflow's
  datastore, or started (a fresh attempt).
- A write that fails is raised, once, by whichever comes first: the next event
  written, the executor's loop (`raise_failure`, within its 0.05 s wait), or the run's
  end; not by the write itself. Dagster raises a failed write of a system event so that a
  run does not go on without its source of truth: the run worker still ends on it, its
  running steps stopped.

`DAGSTER_METAFLOW_SYNC_EVENTS=1` writes every event where it is emitted.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
from types import TracebackType
from typing import Any

# the step events of a run that its worker never reads back while the run executes
DEFERRED = frozenset({"LOGS_CAPTURED", "STEP_START", "STEP_OUTPUT", "STEP_SUCCESS"})
SYNC_VAR = "DAGSTER_METAFLOW_SYNC_EVENTS"


def deferred_writes_enabled() -> bool:
    """False with DAGSTER_METAFLOW_SYNC_EVENTS=1: every event written where it is emitted
    (the comparison the tests and benchmarks make)."""
    return os.environ.get(SYNC_VAR, "0").lower() in ("", "0", "false", "no", "off")


def _deferred(event: Any) -> bool:
    dagster_event = getattr(event, "dagster_event", None)
    return dagster_event is not None and dagster_event.event_type_value in DEFERRED


class EventWriter:
    """For the duration of a `with` block, `instance.handle_new_event` of this one instance
    object defers the events `_deferred` accepts to a writer thread (module docstring)."""

    def __init__(self, instance: Any) -> None:
        self.instance = instance
        self._write: Any = None
        self._queue: collections.deque[tuple[Any, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._pending = 0  # queued or being written
        self._closing = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> EventWriter:
        if "handle_new_event" in vars(self.instance):  # another writer has it: leave it
            return self
        self._write = self.instance.handle_new_event
        self._thread = threading.Thread(
            target=self._run, name="dagster-metaflow:event-writer", daemon=True
        )
        self._thread.start()
        self.instance.handle_new_event = self.handle
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is None:
            return
        try:
            self.flush()
        except Exception as error:
            if exc is None:
                raise
            sys.stderr.write(f"dagster-metaflow: an event of the run was not written: {error}\n")
        finally:
            if vars(self.instance).get("handle_new_event") == self.handle:
                del self.instance.handle_new_event
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join(timeout=5)

    def handle(self, event: Any, *, batch_metadata: Any = None) -> None:
        """`DagsterInstance.handle_new_event`, deferring the events nobody reads back."""
        if _deferred(event):
            with self._cond:
                if not self._closing:
                    self._take_error()
                    self._queue.append((event, batch_metadata))
                    self._pending += 1
                    self._cond.notify_all()
                    return
        self.flush()
        self._write(event, batch_metadata=batch_metadata)

    def flush(self) -> None:
        """Return once every event queued so far is written; raise a failed write."""
        with self._cond:
            self._cond.wait_for(self._drained)
            self._take_error()

    def raise_failure(self) -> None:
        """Raise (once) a deferred write that failed, for a loop that writes nothing itself."""
        if self._error is not None:
            with self._cond:
                self._take_error()

    def _drained(self) -> bool:
        thread = self._thread
        return self._pending == 0 or thread is None or not thread.is_alive()

    def _take_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                event, batch_metadata = self._queue.popleft()
            try:
                self._write(event, batch_metadata=batch_metadata)
            except BaseException as error:
                with self._cond:
                    self._error = self._error or error
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
