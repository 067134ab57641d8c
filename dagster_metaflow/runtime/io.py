"""IO managers for the values compiled ops pass each other: Metaflow task pathspecs.

Ops exchange short strings (`run/step/task`), never data: the data stays in Metaflow's
datastore. Dagster's filesystem IO manager pickles each value and writes two debug events
per op ("Writing file at" / "Loading file from"); on the default SQLite instance every event
is a committed, fsync'd transaction, which made event writes the bottleneck of wide
foreaches. Both managers here log nothing:

- `metaflow_io_manager` keeps the strings as small files under the instance's storage
  directory (so re-executing part of a run from the UI still finds its inputs): the fast
  path, for executors that run every op on the run worker's machine;
- `metaflow_shared_io_manager` keeps them in the instance's own key-value store (SQLite,
  Postgres, MySQL alike), so ops of one run may execute on different machines
  (Celery workers, Kubernetes pods) that share only the instance.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from dagster import BetaWarning, InputContext, IOManager, OutputContext, io_manager

# A generated file attaches these io managers to its flow's graph-backed asset (its own
# resource, so a project's `io_manager` is neither overridden nor in conflict); Dagster
# marks that parameter beta and would warn on every load of the definitions.
warnings.filterwarnings(
    "ignore", message=r"Parameter `resource_defs` of .*from_graph", category=BetaWarning
)

KEY_PREFIX = "dagster_metaflow/io"


def _identifier(context: InputContext | OutputContext) -> list[str]:
    """`[run_id, step_key, output name, (mapping key)]` of the value read or written."""
    if isinstance(context, InputContext):
        return list(context.upstream_output.get_identifier())  # type: ignore[union-attr]
    return list(context.get_identifier())


class PathspecIOManager(IOManager):
    """Stores op outputs as small JSON files: `<storage>/<run_id>/<step>/<output>[/<mapping key>]`."""

    def _path(self, context: InputContext | OutputContext) -> str:
        instance = context.step_context.instance
        return os.path.join(instance.storage_directory(), "metaflow_outputs", *_identifier(context))

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        path = self._path(context)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f)  # a pathspec, or a list of them (regroup_* outputs)
        os.replace(tmp, path)

    def load_input(self, context: InputContext) -> Any:
        with open(self._path(context), encoding="utf-8") as f:
            return json.load(f)


class SharedPathspecIOManager(IOManager):
    """Stores op outputs in the instance's key-value store, one key per output:
    `dagster_metaflow/io/<run_id>/<step>/<output>[/<mapping key>]`."""

    @staticmethod
    def _key(context: InputContext | OutputContext) -> str:
        return "/".join([KEY_PREFIX, *_identifier(context)])

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        storage = context.step_context.instance.run_storage
        storage.set_cursor_values({self._key(context): json.dumps(obj)})

    def load_input(self, context: InputContext) -> Any:
        key = self._key(context)
        value = context.step_context.instance.run_storage.get_cursor_values({key}).get(key)
        if value is None:
            raise FileNotFoundError(
                f"no pathspec stored for {key}: the upstream op's output is missing from the instance"
            )
        return json.loads(value)


@io_manager(description="Stores Metaflow task pathspecs passed between compiled ops.")
def metaflow_io_manager() -> PathspecIOManager:
    return PathspecIOManager()


@io_manager(
    description="Stores Metaflow task pathspecs passed between compiled ops in the Dagster "
    "instance, for executors whose ops run on several machines."
)
def metaflow_shared_io_manager() -> SharedPathspecIOManager:
    return SharedPathspecIOManager()
