"""What the Dagster UI shows on an op's output: where its Metaflow task is, what it
produced, and its cards."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from dagster import MetadataValue

from .command import StepCommand
from .ids import TASKS_KEY
from .settings import FlowSettings
from .taskstore import TaskStore


class TaskMetadata:
    """Dagster metadata of the tasks of one flow."""

    def __init__(self, settings: FlowSettings, store: TaskStore, command: StepCommand) -> None:
        self.settings = settings
        self.store = store
        self.command = command

    def pathspec_value(self, pathspec: str) -> Any:
        """The task's full pathspec (with the flow name), as every failure and output shows it."""
        return MetadataValue.text(f"{self.settings.name}/{pathspec}")

    def of_task(
        self, pathspec: str, ds: Any = None, duration: float | None = None
    ) -> dict[str, Any]:
        """What the UI shows on an op's output: where the task is and what it produced."""
        name = self.settings.name
        md: dict[str, Any] = {
            "pathspec": self.pathspec_value(pathspec),
            "client": MetadataValue.md(
                f"```python\nfrom metaflow import Task\nTask({f'{name}/{pathspec}'!r})\n```"
            ),
        }
        if duration is not None:
            md["duration_s"] = MetadataValue.float(round(duration, 3))
        try:
            ds = ds if ds is not None else self.store.task_datastore(pathspec)
            md["attempt"] = MetadataValue.int(int(ds.attempt))
            names = sorted(n for n in ds if not n.startswith("_"))  # names only, no loading
            md["artifacts"] = MetadataValue.text(", ".join(names))
        except Exception:
            pass
        else:
            if "_control_mapper_tasks" in ds:
                md.update(_control_tasks(pathspec, ds))
        step = pathspec.split("/")[1]
        if step in self.settings.card_steps:
            md.update(self.of_cards(pathspec))
        return md

    def of_cards(self, pathspec: str) -> dict[str, Any]:
        """The task's cards: their files (local datastore) and the command that opens them."""
        run_id, step, task_id = pathspec.split("/")
        flow_file = os.path.basename(self.command.source_path)
        md: dict[str, Any] = {
            "card_view": MetadataValue.text(
                f"python {flow_file} card view {run_id}/{step}/{task_id}"
            ),
        }
        root = self.card_root()
        if root is not None:
            folder = Path(
                root, self.settings.name, "runs", run_id, "steps", step, "tasks", task_id, "cards"
            )
            for i, html in enumerate(sorted(folder.glob("*.html"))):
                md[f"card_{i}" if i else "card"] = MetadataValue.path(str(html))
        return md

    def card_root(self) -> str | None:
        """Where Metaflow's local card store keeps cards for steps run in the steps' cwd
        (CardDatastore.get_storage_root, evaluated from the steps' working directory)."""
        if self.settings.datastore_type != "local":
            return None
        configured = os.environ.get("METAFLOW_CARD_LOCALROOT")
        if configured:
            return configured
        current = self.command.cwd
        while True:
            candidate = os.path.join(current, ".metaflow")
            if os.path.isdir(candidate):
                return os.path.join(os.path.realpath(candidate), "mf.cards")
            parent = os.path.dirname(current)
            if parent == current:
                return None
            current = parent


def _control_tasks(pathspec: str, ds: Any) -> dict[str, Any]:
    """A control task's count of tasks: itself and the tasks it started (a @parallel control
    task lists itself among them, an unbounded foreach's does not; compared by task id, as a
    cloned control task lists its origin run's tasks). One small artifact loaded."""
    try:
        mappers = ds["_control_mapper_tasks"] or ()
    except Exception as exc:
        print(f"dagster-metaflow: could not count the tasks {pathspec} started: {exc}", file=sys.stderr)
        return {}
    ids = {str(m).rsplit("/", 1)[-1] for m in mappers} | {pathspec.rsplit("/", 1)[-1]}
    return {TASKS_KEY: MetadataValue.int(len(ids))}
