"""When our processes collect garbage: not while a command starts, not at exit (runtime/heap.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_PROGRAM = """
import atexit, gc
from dagster_metaflow.runtime.heap import exit_without_collecting

freeze = gc.freeze
def counted_freeze():
    print("freeze", flush=True)
    freeze()
gc.freeze = counted_freeze

atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))
exit_without_collecting()
exit_without_collecting()  # a process running two commands registers it once
atexit.register(lambda: print("handler registered later ran", flush=True))
print("frozen before exit:", gc.get_freeze_count() > 0, flush=True)
raise SystemExit(3)
"""


def _run(program: str, status: int = 0) -> list[str]:
    """The lines `program` prints in a fresh interpreter, which exits with `status`."""
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert proc.returncode == status, proc.stderr
    return proc.stdout.splitlines()


def test_exit_freezes_the_heap_once_runs_every_handler_and_keeps_the_status() -> None:
    assert _run(_PROGRAM, status=3) == [
        "frozen before exit: False",
        "handler registered later ran",
        "freeze",
        "frozen at exit: True",
    ]


_STARTING = """
import gc
from dagster_metaflow.runtime.heap import defer_collection, resume_collection

defer_collection()
print("deferred:", gc.isenabled(), gc.get_freeze_count() > 0)
resume_collection()
print("resumed:", gc.isenabled(), gc.get_freeze_count() > 0)
gc.disable()  # a caller that runs without the collector keeps it off
defer_collection()
resume_collection()
print("kept off:", gc.isenabled())
"""


def test_collection_is_deferred_while_starting_then_resumed_past_the_frozen_heap() -> None:
    assert _run(_STARTING) == [
        "deferred: False False",
        "resumed: True True",
        "kept off: False",
    ]


_IN_PROCESS_CLI = """
import gc, sys
from metaflow.cli import main

sys.path.insert(0, sys.argv[1])
from hello_flow import HelloFlow

assert gc.isenabled()
try:
    main(HelloFlow(use_cli=False), args=["dagster", "list-runs"])
except SystemExit:
    pass
print("collecting after the command:", gc.isenabled(), flush=True)
"""


def test_a_process_that_runs_a_command_in_process_goes_on_collecting(tmp_path: Path) -> None:
    """The `dagster` group defers collection while the command starts; a caller that ran it
    in-process (not as its own process) gets the collector back, even when it failed (here:
    no Dagster instance)."""
    flows = Path(__file__).parent.parent / "flows"
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "no-home"), USER="tester")
    proc = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS_CLI, str(flows)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert "collecting after the command: True" in proc.stdout, proc.stdout + proc.stderr


_RUN_STARTING = """
import gc
from types import SimpleNamespace
from dagster_metaflow.runtime.flow import _open_store
from dagster_metaflow.runtime.heap import defer_collection

def fails():
    raise RuntimeError("no datastore")

defer_collection()  # `_on_defined`: a process about to run a job
try:
    _open_store(SimpleNamespace(store=SimpleNamespace(open=fails)))
except RuntimeError:
    pass
print("after the datastore:", gc.isenabled(), gc.get_freeze_count() > 0)
"""


def test_a_process_running_a_job_collects_again_once_its_datastore_is_open() -> None:
    """Collection is deferred while the run starts and Metaflow is imported, and resumed
    (past the frozen heap) when that is done, even if opening the datastore failed."""
    assert _run(_RUN_STARTING) == ["after the datastore: True True"]
