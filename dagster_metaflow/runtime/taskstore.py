"""Metaflow's datastore, as the ops read and write it: task results, attempts, the user's
error, the runtime's share of a task's logs.

Everything an op knows about a finished task comes from its final attempt in the datastore
(what Metaflow's own runtime reads: `_task_ok`, `_foreach_num_splits`, `_transition`, ...).
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from dagster import Failure

from .ids import is_ubf_control
from .resume import in_run
from .settings import FlowSettings

MAX_LOG_BYTES = 100 * 1024 * 1024


class TaskStore:
    """The flow's tasks in its Metaflow datastore."""

    def __init__(self, settings: FlowSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._flow_datastore: Any = None

    @property
    def flow_datastore(self) -> Any:
        """Metaflow's datastore of the flow, opened once (the warm-up thread may open it
        while an op's thread asks for it)."""
        if self._flow_datastore is None:
            with self._lock:
                if self._flow_datastore is None:
                    self._flow_datastore = self._open_flow_datastore()
        return self._flow_datastore

    def _open_flow_datastore(self) -> Any:
        from metaflow.datastore import FlowDataStore
        from metaflow.plugins import DATASTORES

        s = self.settings
        impl = next((d for d in DATASTORES if d.TYPE == s.datastore_type), None)
        if impl is None:
            raise RuntimeError(f"Metaflow datastore {s.datastore_type!r} is not available")
        root = s.datastore_root or impl.get_datastore_root_from_config(lambda *a, **k: None)
        return FlowDataStore(s.name, None, None, None, None, storage_impl=impl, ds_root=root)

    def open(self) -> None:
        """Open the datastore ahead of its first use (`flow_datastore`); errors show there."""
        try:
            _ = self.flow_datastore
        except Exception:
            pass

    def task_datastore(self, pathspec: str, attempt: int | None = None, mode: str = "r") -> Any:
        run_id, step, task_id = pathspec.split("/")
        return self.flow_datastore.get_task_datastore(
            run_id, step, task_id, attempt=attempt, mode=mode
        )

    def succeeded(self, pathspec: str) -> bool:
        """The task's latest attempt finished successfully (Metaflow marks failed attempts
        done too, with `_task_ok` False)."""
        try:
            return bool(self.task_datastore(pathspec).get("_task_ok", False))
        except Exception:
            return False

    def attempts_made(self, pathspec: str) -> int:
        """Number of attempts a task already has (0 when it never started)."""
        try:
            return int(self.task_datastore(pathspec).attempt) + 1
        except Exception:
            return 0

    def fresh_attempt(
        self, pathspec: str, retry_count: int, max_user_code_retries: int
    ) -> tuple[int, int]:
        """(attempt, max user code retries) for a task that a lost worker may have started:
        attempt numbers are never reused, and the lost attempts do not eat the @retry budget."""
        from metaflow.metaflow_config import MAX_ATTEMPTS

        run_id, step, task_id = pathspec.split("/")
        try:
            started = self.flow_datastore.get_task_datastore(
                run_id, step, task_id, mode="r", allow_not_done=True
            ).attempt
        except Exception:
            started = None
        if started is None or started < retry_count:
            return retry_count, max_user_code_retries
        attempt = started + 1
        if attempt >= MAX_ATTEMPTS:
            raise Failure(
                description=f"Metaflow task {pathspec} has used all {MAX_ATTEMPTS} attempts Metaflow "
                "allows (attempts were lost with run workers that died)",
                allow_retries=False,
            )
        return attempt, max_user_code_retries + attempt - retry_count

    def user_error(self, pathspec: str, attempt: int) -> str | None:
        """The user's exception as Metaflow recorded it (`_exception`), with the traceback
        from the first frame outside Metaflow: what the Dagster failure shows first."""
        try:
            ds = self.task_datastore(pathspec, attempt=attempt)
            if "_exception" not in ds:
                return None
            exc = ds["_exception"]
        except Exception:
            return None
        head = f"{getattr(exc, 'type', 'Exception')}: {getattr(exc, 'exception', '')}"
        import metaflow

        internal = os.path.dirname(os.path.abspath(metaflow.__file__))
        trace = (getattr(exc, "stacktrace", None) or "").splitlines()
        user = [
            i for i, ln in enumerate(trace) if ln.strip().startswith("File ") and internal not in ln
        ]
        frames = trace[user[0] :] if user else []
        return "\n".join([head, *(["Traceback (user code):", *frames] if frames else [])])

    def record_backstop_timeout(self, pathspec: str, attempt: int, timeout: int | None) -> None:
        """The task ignored Metaflow's own timeout (stuck outside Python) and was killed:
        mark its attempt done as Metaflow would have, so clients see a finished, failed task."""
        try:
            ds = self.task_datastore(pathspec, attempt=attempt, mode="w")
            if not ds.has_metadata("attempt_done"):
                ds.done()
        except Exception as exc:
            print(
                f"dagster-metaflow: could not mark {pathspec} done after timeout {timeout}s: {exc}",
                file=sys.stderr,
            )

    def save_logs(
        self, pathspec: str, attempt: int, stdout: MflogBuffer, stderr: MflogBuffer
    ) -> None:
        """Persist what the runtime saw of the task's streams, as Metaflow's runtime does."""
        from metaflow.mflog import RUNTIME_LOG_SOURCE

        try:
            ds = self.task_datastore(pathspec, attempt=attempt, mode="w")
            ds.save_logs(
                RUNTIME_LOG_SOURCE, {"stdout": stdout.getbuffer(), "stderr": stderr.getbuffer()}
            )
        except Exception as exc:  # logs must never turn a good task into a failure
            print(f"dagster-metaflow: could not persist logs of {pathspec}: {exc}", file=sys.stderr)

    def origin_tasks(self, origin_run_id: str) -> list[Any]:
        """Task datastores (latest attempt) of every task of a Metaflow run."""
        return list(self.flow_datastore.get_task_datastores(run_id=origin_run_id))

    def num_parallel(self, pathspec: str) -> int:
        """N of `self.next(..., num_parallel=N)`, from the splitting task's final attempt."""
        ds = self.task_datastore(pathspec)
        return int(ds[ds["_foreach_var"]].num_parallel)

    def control_mappers(self, control: str, run_id: str) -> list[str]:
        """The tasks a control task (@parallel, unbounded foreach) started, placed in `run_id`."""
        mappers = self.task_datastore(control)["_control_mapper_tasks"]
        if not mappers:
            raise Failure(description=f"control task {control} listed no mapper tasks")
        return [in_run(str(m), run_id) for m in mappers]

    def ubf_mappers(self, paths: Sequence[str], run_id: str) -> list[str]:
        """`paths` with every unbounded-foreach control task replaced by the tasks it started
        (`_control_mapper_tasks`, placed in `run_id`: a cloned control lists its origin's)."""
        out: list[str] = []
        for path in paths:
            out.extend(self.control_mappers(path, run_id) if is_ubf_control(path) else [path])
        return out


class MflogBuffer:
    """Collects a stream in Metaflow's mflog format, like the native runtime's TruncatedBuffer."""

    def __init__(self, maxsize: int = MAX_LOG_BYTES) -> None:
        self._buf = io.BytesIO()
        self._size = 0
        self._max = maxsize
        self._full = False
        self._lock = threading.Lock()

    def add(self, line: bytes) -> None:
        from metaflow.mflog import RUNTIME_LOG_SOURCE, mflog

        with self._lock:
            if self._full:
                return
            if mflog.is_structured(line):
                res = mflog.parse(line)
                if res is None or not res.should_persist:
                    return  # already persisted by the task itself
                data = mflog.unset_should_persist(line)
            else:
                data = mflog.decorate(
                    RUNTIME_LOG_SOURCE, line, now=datetime.now(UTC).replace(tzinfo=None)
                )
            if self._size + len(data) > self._max:
                data = mflog.decorate(
                    RUNTIME_LOG_SOURCE, b"[TRUNCATED - MAXIMUM LOG FILE SIZE REACHED]\n"
                )
                self._full = True
            self._buf.write(data)
            self._size += len(data)

    def getbuffer(self) -> io.BytesIO:
        self._buf.seek(0)
        return self._buf
