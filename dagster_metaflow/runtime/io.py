"""IO manager for the values compiled ops pass each other: Metaflow task pathspecs.

Ops exchange short strings (`run/step/task`), never data: the data stays in Metaflow's
datastore. Dagster's filesystem IO manager pickles each value and writes two debug events
per op ("Writing file at" / "Loading file from"); on the default SQLite instance every event
is a committed, fsync'd transaction, which made event writes the bottleneck of wide
foreaches. This manager stores the strings as small text files under the instance's
storage directory (so re-executing part of a run from the UI still finds its inputs) and
logs nothing.
"""

from __future__ import annotations

import json
import os
from typing import Any

from dagster import InputContext, IOManager, OutputContext, io_manager


class PathspecIOManager(IOManager):
    """Stores op outputs as small JSON files: `<storage>/<run_id>/<step>/<output>[/<mapping key>]`."""

    def _path(self, context: InputContext | OutputContext) -> str:
        if isinstance(context, InputContext):
            identifier = context.upstream_output.get_identifier()  # type: ignore[union-attr]
        else:
            identifier = context.get_identifier()
        instance = context.step_context.instance
        return os.path.join(instance.storage_directory(), "metaflow_outputs", *identifier)

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


@io_manager(description="Stores Metaflow task pathspecs passed between compiled ops.")
def metaflow_io_manager() -> PathspecIOManager:
    return PathspecIOManager()
