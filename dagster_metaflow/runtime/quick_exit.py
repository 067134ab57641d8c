"""Exit a process that loaded Dagster without the interpreter's final garbage collection.

With Dagster, SQLAlchemy and pydantic loaded, that collection took ~0.4 s after a command
had printed its last line (`trigger --wait`, `dagster job execute`): a tenth of a small
flow's whole run. atexit handlers still run, modules are still torn down; only the final
collections are skipped (`gc.freeze` from an atexit handler). So garbage reference cycles
left at exit are not finalized: their `__del__` and weakref callbacks do not run (a
buffered file only reachable from such a cycle would not be flushed). Our commands write
through SQLite commits and closed files, which need no finalizer.
"""

from __future__ import annotations

import atexit
import gc


def exit_without_collecting() -> None:
    """Make this process's exit skip the final collection; once, however often called."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
