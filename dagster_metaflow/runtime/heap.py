"""When our processes that load Dagster collect garbage: not while they start, not at exit.

Importing Dagster, SQLAlchemy and pydantic, opening the instance and loading definitions
creates ~1M objects that live as long as the process. CPython's collector meanwhile runs a
full collection each time the heap grew by a quarter: four of them, ~0.19 s, plus ~0.07 s
of younger collections, in a `trigger --wait` of 1.8 s (gc callbacks, 2026-12-06), where a
native `flow.py run` spends 0.01 s. And at exit the interpreter collects everything once
more (~0.4 s). So:

- `defer_collection` (our CLI commands, from the `dagster` group, after Metaflow's checks
  and pylint): no collection while the command starts; `resume_collection` where it would
  run for long (`trigger --wait` following a run, a forked run worker, `launch-step`
  preparing and running a task) moves what start-up built out of the collector's sight
  (`gc.freeze`) and collects again from there. A short command (`create`, `list-runs`,
  `status`...) runs with it off and resumes it as its click context closes: a process that
  invoked the CLI in-process goes on collecting as it did before, past a frozen heap
  (unfrozen, its first collection would walk every object the command created, ~0.05 s).
- A process about to run a job (`dagster job execute`, a run worker; once its definitions
  are loaded) defers collection too, until Metaflow is imported for the flow's datastore
  (~10 ms less of that import, which the run's first op waits for), then resumes past
  everything loaded (`runtime/flow.py`), the start of the run included.
- `exit_without_collecting`: atexit handlers still run, modules are still torn down; only
  the final collections are skipped (`gc.freeze` from an atexit handler).

What freezing costs: reference cycles that are already garbage at that moment (or
become garbage later, of the objects frozen) are kept until exit, and garbage cycles left at exit are not finalized (their `__del__` and weakref
callbacks do not run; a buffered file only reachable from such a cycle would not be
flushed). Our commands write through SQLite commits and closed files, which need no
finalizer.
"""

from __future__ import annotations

import atexit
import gc

_enabled_before: bool | None = None  # the collector's state when `defer_collection` began


def defer_collection() -> None:
    """No garbage collection until `resume_collection` (or exit): this command is starting."""
    global _enabled_before
    if _enabled_before is None:
        _enabled_before = gc.isenabled()
    gc.disable()


def resume_collection() -> None:
    """Collect garbage again, from here on: what the process built so far stays (frozen).
    A caller that had the collector off before `defer_collection` keeps it off."""
    global _enabled_before
    gc.freeze()
    if _enabled_before is not False:
        gc.enable()
    _enabled_before = None


def exit_without_collecting() -> None:
    """Make this process's exit skip the final collection; once, however often called."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
