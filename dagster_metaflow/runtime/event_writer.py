"""A run's step events written by one thread of the run worker, in order, off the steps' path.

Dagster writes every event where it is emitted: a row committed to the run's SQLite
database with its fsync and WAL checkpoint (1.5-3 ms), before the emitting thread goes on.
Four such writes per step (captured logs, start, output, success) sat between one Metaflow
task's end and the next one's start, ~10 ms of every step of a linear flow.

While our executor runs a run on an instance whose event log is Dagster's SQLite storage,
the step events nobody in the run worker reads back (`DEFERRED`) go to one writer thread,
which writes them in the order they were emitted. Every other event (a failure, a retry,
a skip, an asset, a hook, a log message, the run's own events) first waits until
everything queued is written, then is written by the thread that emitted it, as before:
where Dagster handles a failed write itself (a log message's is reported as an engine
event, whose own failure raises), it still does. So the event log holds the same events in
the same order, each with the timestamp of its emission; a reader in another process sees
a step event a few milliseconds later. Other storages (Postgres, MySQL) are left as they
are: nothing in SQLite's write path logs, so the writer never waits on a logging handler's
lock that a thread waiting for the writer holds; a call made on the writer thread itself
(a subscriber writing an event) is written at once.

What changes, and is accepted:
- A run worker killed with events still queued loses them: those of the last few
  milliseconds, as a worker killed between a task's end and its events' writes always
  could. What is lost is always the end of the queue, so the log is what a worker killed
  a few milliseconds earlier would have left. The watchdog fails the run, and a resumed
  worker finds those tasks as it finds any whose events were lost: done in Metaflow's
  datastore, or started (a fresh attempt).
- A deferred write that fails is raised by the executor's loop (`raise_failure`, within
  its 0.05 s wait), or at the end of the writer's block, not by the write itself; the
  step that emitted the event is not failed for it. The run worker ends on it, its running
  steps stopped (Dagster raises a failed write of a system event so that a run does not go
  on without its source of truth), and never ends its run successfully. Events emitted
  after a failed write are written in place, each raising where it fails, as before.

`DAGSTER_METAFLOW_SYNC_EVENTS=1` writes every event where it is emitted.
"""

from __future__ import annotations

import collections
import sys
import threading
from types import TracebackType
from typing import Any

from .switches import SYNC_EVENTS_VAR, switch

# the step events of a run that its worker never reads back while the run executes
DEFERRED = frozenset({"LOGS_CAPTURED", "STEP_START", "STEP_OUTPUT", "STEP_SUCCESS"})
# Dagster's SQLite event logs (per-run shards, and the consolidated one)
SQLITE_EVENT_LOGS = "dagster._core.storage.event_log.sqlite"


def deferred_writes_enabled(instance: Any) -> bool:
    """Whether `EventWriter` applies: Dagster's SQLite event log, and not turned off with
    DAGSTER_METAFLOW_SYNC_EVENTS=1 (the comparison the tests and benchmarks make)."""
    if switch(SYNC_EVENTS_VAR, default=False):
        return False
    try:
        storage = type(instance.event_log_storage)
    except Exception:
        return False
    return storage.__module__.startswith(SQLITE_EVENT_LOGS + ".")


def _deferred(event: Any) -> bool:
    dagster_event = getattr(event, "dagster_event", None)
    return dagster_event is not None and dagster_event.event_type_value in DEFERRED


class EventWriter:
    """For the duration of a `with` block, `instance.handle_new_event` of this one instance
    object defers the events `_deferred` accepts to a writer thread (module docstring)."""

    def __init__(self, instance: Any) -> None:
        self.instance = instance
        self.deferred = 0  # events written by the writer thread
        self._write: Any = None
        self._queue: collections.deque[tuple[Any, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._pending = 0  # queued or being written
        self._closing = False
        self._failed = False  # a deferred write failed: every event is written in place
        self._error: BaseException | None = None  # that failure, until raised
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
        finally:
            if vars(self.instance).get("handle_new_event") == self.handle:
                del self.instance.handle_new_event
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join(timeout=5)
        if exc is None:
            self.raise_failure()
        elif self._error is not None:
            sys.stderr.write(f"dagster-metaflow: an event of the run was not written: {self._error}\n")

    def handle(self, event: Any, *, batch_metadata: Any = None) -> None:
        """`DagsterInstance.handle_new_event`, deferring the events nobody reads back."""
        if threading.current_thread() is self._thread:  # from inside a write: write it now
            self._write(event, batch_metadata=batch_metadata)
            return
        if _deferred(event):
            with self._cond:
                if not (self._closing or self._failed):
                    self._queue.append((event, batch_metadata))
                    self._pending += 1
                    self._cond.notify_all()
                    return
        self.flush()
        self._write(event, batch_metadata=batch_metadata)

    def flush(self) -> None:
        """Return once every event queued so far has been written (or failed to be)."""
        with self._cond:
            self._cond.wait_for(self._drained)

    def raise_failure(self) -> None:
        """Raise, once, a deferred write that failed: the executor's loop asks."""
        if self._error is not None:
            with self._cond:
                error, self._error = self._error, None
            if error is not None:
                raise error

    def _drained(self) -> bool:
        thread = self._thread
        return self._pending == 0 or thread is None or not thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                event, batch_metadata = self._queue.popleft()
            try:
                self._write(event, batch_metadata=batch_metadata)
                self.deferred += 1
            except BaseException as error:
                with self._cond:
                    self._failed = True
                    if self._error is None:
                        self._error = error
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
