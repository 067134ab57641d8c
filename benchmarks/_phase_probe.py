"""Run Dagster's CLI with timestamps taken at the moments `phases.py` reports.

    python _phase_probe.py OUT T0 DAGSTER_SCRIPT job execute -f FILE -j JOB

T0 is the epoch time at which the parent started this command. Each mark is the time since
T0, in seconds, at which a wrapped function was first entered or first returned ("last
step ended": last returned); they are written to OUT as JSON when the process exits
("process exiting" is marked after the exit handlers registered later than the probe's:
the executor's `gc.freeze` and the zygote pool's, before Dagster's own). The functions
are wrapped in place, in their defining modules; our runtime's modules as they are
imported (a meta path finder), so the command loads what it loads without the probe, in
the same order, plus this file's few standard-library imports before Dagster. A function
that is missing (another Dagster release) leaves its mark out, with a warning.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import inspect
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

OUT, T0 = sys.argv[1], float(sys.argv[2])
MARKS: dict[str, float] = {}
_LOCK = threading.Lock()


def mark(name: str, last: bool = False) -> None:
    """Record `name` now: its first occurrence, or with `last` its latest (steps run in
    threads: the time is read before the lock, the earliest/latest kept under it)."""
    now = time.time() - T0
    with _LOCK:
        MARKS[name] = max(now, MARKS.get(name, now)) if last else min(now, MARKS.get(name, now))


mark("Python started")

# (module, qualified name, mark on first entry, mark on exit, exit mark keeps the last)
PROBES: Sequence[tuple[str, str, str | None, str | None, bool]] = (
    ("dagster._core.instance", "DagsterInstance.get", None, "instance loaded", False),
    ("dagster._core.code_pointer", "load_python_file", None, "definitions file loaded", False),
    ("dagster._core.instance", "DagsterInstance.create_run_for_job", None, "run created", False),
    ("dagster._core.execution.api", "execute_run", "run execution started", "run ended", False),
    (
        "dagster_metaflow.runtime.zygote",
        "Zygote.wait_ready",
        "step zygote started",
        "step zygote ready",
        False,
    ),
    (
        "dagster_metaflow.runtime.prepare",
        "RunPreparation.persist_parameters",
        "`flow.py init` started",
        None,
        False,
    ),
    ("dagster_metaflow.runtime.steprun", "StepRunner.run", "first step started", "last step ended", True),
)


def _wrapped(fn: Callable[..., Any], enter: str | None, leave: str | None, last: bool) -> Callable[..., Any]:
    """`fn`, marking `enter` when called and `leave` when it returns or raises."""

    @functools.wraps(fn)
    def probe(*args: Any, **kwargs: Any) -> Any:
        if enter:
            mark(enter)
        try:
            return fn(*args, **kwargs)
        finally:
            if leave:
                mark(leave, last)

    return probe


_PATCHED: set[str] = set()


def _patch(module: ModuleType) -> None:
    """Wrap the probed functions of `module` (once); a missing one is skipped with a warning,
    never failing the import (a module whose code raised would not be imported)."""
    if module.__name__ in _PATCHED:
        return
    _PATCHED.add(module.__name__)
    for mod_name, qualname, enter, leave, last in PROBES:
        if mod_name != module.__name__:
            continue
        *owners, attr = qualname.split(".")
        try:
            owner: Any = module
            for name in owners:
                owner = getattr(owner, name)
            raw = inspect.getattr_static(owner, attr)  # a staticmethod as such, also inherited
        except AttributeError:
            sys.stderr.write(f"phase probe: {mod_name}.{qualname} not found; its marks are left out\n")
            continue
        if isinstance(raw, (classmethod, staticmethod)):
            setattr(owner, attr, type(raw)(_wrapped(raw.__func__, enter, leave, last)))
        else:
            setattr(owner, attr, _wrapped(raw, enter, leave, last))


class _PatchingLoader(importlib.abc.Loader):
    """A module's own loader, patching the module once its code has run."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # get_source, resource readers, ...
        return getattr(self.loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds a probed module with the other finders and gives it the patching loader."""

    names = {p[0] for p in PROBES}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec  # type: ignore[no-any-return]
        return None


def main() -> None:
    """Import Dagster's CLI with the finder in place, then run it as the `dagster` script."""
    # as the `dagster` script's own interpreter has it (not this file's directory)
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[3]))
    sys.meta_path.insert(0, _Finder())
    import dagster._cli

    mark("Dagster's CLI imported")
    for name in _Finder.names:  # imported with Dagster's CLI, before the finder saw them
        if name in sys.modules:
            _patch(sys.modules[name])

    def write() -> None:
        mark("process exiting")
        with _LOCK:
            marks = dict(MARKS)
        with open(OUT, "w") as f:
            json.dump(marks, f)

    atexit.register(write)
    sys.argv = sys.argv[3:]  # as the `dagster` script sees them (the runtime reads argv)
    dagster._cli.main()


if __name__ == "__main__":
    main()
