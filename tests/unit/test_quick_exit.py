"""A command's exit skips the interpreter's final collection, and nothing else."""

from __future__ import annotations

import subprocess
import sys

_PROGRAM = """
import atexit, gc
from dagster_metaflow.runtime.quick_exit import exit_without_collecting

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


def test_exit_freezes_the_heap_once_runs_every_handler_and_keeps_the_status() -> None:
    proc = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines() == [
        "frozen before exit: False",
        "handler registered later ran",
        "freeze",
        "frozen at exit: True",
    ]
