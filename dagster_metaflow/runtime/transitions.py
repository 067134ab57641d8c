"""Every finished task's `self.next()` checked against the graph, as Metaflow's runtime
checks it: a mismatch is Metaflow's MetaflowInternalError, fatal for the run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagster import Failure

from .settings import FlowSettings
from .taskmeta import TaskMetadata
from .taskstore import TaskStore


def transition_error(
    step: str, actual: Sequence[str], expected: Sequence[str] | None, switch: bool
) -> str | None:
    """Metaflow's message (runtime.py `_queue_tasks`, as its CLI prints it) when a task's
    `self.next()` named `actual` but the graph says `expected`; None when they agree or
    the graph is unknown (a file generated before transitions were recorded)."""
    if switch:
        if len(actual) != 1:
            return f"Switch step {step} should transition to exactly one step at runtime, but got: {', '.join(actual)}"
        if expected is not None and actual[0] not in expected:
            return (
                f"Switch step {step} transitioned to unexpected step {actual[0]}. "
                f"Expected one of: {', '.join(expected)}"
            )
        return None
    if expected is None or list(actual) == list(expected):
        return None
    return (
        f"Based on static analysis of the code, step {step} was expected to transition to step(s) "
        f"{', '.join(expected)}. However, when the code was executed, self.next() was called with "
        f"{', '.join(actual)}. Make sure there is only one unconditional self.next() call in the end of your step."
    )


class Transitions:
    """The graph's transitions of one flow, checked against its finished tasks."""

    def __init__(self, settings: FlowSettings, store: TaskStore, meta: TaskMetadata) -> None:
        self.settings = settings
        self.store = store
        self.meta = meta

    def check(self, step: str, pathspec: str, ds: Any = None, switch: bool = False) -> list[str]:
        """The steps the task's `self.next()` named (its `_transition`), checked against the
        graph as Metaflow's runtime checks every finished task. A mismatch (e.g. a decorator
        replaced the body, so self.next() never ran) is Metaflow's MetaflowInternalError,
        fatal for the run: the op fails with Metaflow's message and is not retried."""
        ds = ds if ds is not None else self.store.task_datastore(pathspec)
        trans = ds.get("_transition", None)
        actual = [str(s) for s in trans[0]] if trans else []
        expected = self.settings.transitions.get(step)
        problem = transition_error(
            step, actual, expected, switch or step in self.settings.switch_steps
        )
        if problem is not None:
            raise Failure(
                description=f"Internal error: {problem}",
                metadata={"pathspec": self.meta.pathspec_value(pathspec)},
                allow_retries=False,
            )
        return actual

    def check_finished(self, step: str, pathspec: str) -> Any:
        """Check a finished task of a step the graph knows (a switch's is checked where its
        choice is read); returns the datastore read for it, or None when none was needed."""
        if step not in self.settings.transitions or step in self.settings.switch_steps:
            return None
        ds = self.store.task_datastore(pathspec)
        self.check(step, pathspec, ds)
        return ds

    def chosen_step(self, pathspec: str) -> str:
        """The step a switch task chose, read from its final attempt and checked against the
        graph (exactly one of the switch's targets) as Metaflow's runtime does."""
        (chosen,) = self.check(pathspec.split("/")[1], pathspec, switch=True)
        return chosen
