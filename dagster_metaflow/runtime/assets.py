"""Dagster asset-materialization metadata for a finished Metaflow run (issue 17).

The flow's end op reports the run (the flow asset) and some end-step artifacts (artifact
assets) once `end` succeeded. Everything comes from Metaflow's datastore, not the metadata
service, so local and S3 runs look the same. The metadata is decoration: reading it must
never fail the op, so problems become `metaflow/*_error` entries or a line on stderr.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

PREVIEW_MAX_BYTES = 1_000_000  # values stored larger than this are never loaded
TABLE_PREVIEW_BYTES = 10_000  # ... and only these small ones for the flow's artifact table
MAX_TEXT = 1_000  # characters of a string or repr shown
MAX_JSON = 10_000  # characters of a JSON preview
MAX_CELL = 100  # characters of a table cell
FRAME_ROWS = 5
MAX_CARD_TASKS = 50  # runs with more tasks get no producer/card lookup
END_STEP = "end"
_INCLUDED_FILE = "<class 'metaflow.includefile.IncludedFile'>"

ARTIFACT_TABLE = TableSchema(
    columns=[
        TableColumn("name", "string"),
        TableColumn("type", "string"),
        TableColumn("size", "int", description="serialized bytes"),
        TableColumn("preview", "string"),
    ]
)


def flow_asset_metadata(
    flow_name: str,
    run_id: str,
    end_task_id: str,
    datastore_type: str,
    datastore_root: str | None,
    dagster_run_id: str | None = None,
    skip: Collection[str] = (),
) -> dict[str, Any]:
    """The flow asset: the Metaflow run, how to read it, and a table of the end step's
    artifacts (what the run produced). The client snippet reads the first artifact not in
    `skip` (the flow's parameters, which every run carries)."""
    run = f"{flow_name}/{run_id}"
    md: dict[str, Any] = {"metaflow/run_pathspec": MetadataValue.text(run)}
    if dagster_run_id:
        md["metaflow/dagster_run"] = MetadataValue.dagster_run(dagster_run_id)
    try:
        reader = _EndTask(flow_name, run_id, end_task_id, datastore_type, datastore_root)
        names = reader.names()
        shown = [n for n in names if n not in skip] or names
        md["metaflow/client"] = _client_md(run, shown[0] if shown else "<artifact>")
        md["metaflow/artifacts"] = MetadataValue.table(reader.table_rows(names), ARTIFACT_TABLE)
    except Exception as exc:
        _warn(f"could not read the artifacts of {run}/{END_STEP}/{end_task_id}: {exc}")
        md.setdefault("metaflow/client", _client_md(run, "<artifact>"))
        md["metaflow/metadata_error"] = MetadataValue.text(_describe(exc))
    return md


def artifacts_metadata(
    flow_name: str,
    run_id: str,
    end_task_id: str,
    artifacts: Iterable[str],
    datastore_type: str,
    datastore_root: str | None,
    *,
    card_root: str | None = None,
    card_steps: Collection[str] | None = None,
) -> dict[str, dict[str, Any] | None]:
    """Metadata of each named end-step artifact (None: the end task has no such artifact),
    reading the end task and walking the run for producers once for all of them.
    `card_root` is where the steps' cards are when known (local card roots depend on the
    steps' cwd); `card_steps` limits the card lookup to steps with @card."""
    wanted = list(dict.fromkeys(artifacts))
    run = f"{flow_name}/{run_id}"
    try:
        reader = _EndTask(flow_name, run_id, end_task_id, datastore_type, datastore_root)
    except Exception as exc:
        _warn(f"could not open {run}/{END_STEP}/{end_task_id}: {exc}")
        err = MetadataValue.text(_describe(exc))
        end = f"{run}/{END_STEP}/{end_task_id}"
        return {n: {**_where(end, run, n), "metaflow/metadata_error": err} for n in wanted}
    present = [n for n in wanted if n in reader.ds]
    out: dict[str, dict[str, Any] | None] = {n: None for n in wanted}
    sizes = reader.sizes(present)
    values = reader.load([n for n in present if 0 < sizes[n] <= PREVIEW_MAX_BYTES])
    producers = reader.producers(present)
    for name in present:
        md = {
            **_where(reader.task_pathspec, run, name),
            "metaflow/type": MetadataValue.text(reader.type_name(name)),
            "metaflow/size_bytes": MetadataValue.int(sizes[name]),
        }
        if name in values:
            md.update(value_preview(values[name]))
        md.update(reader.producer_metadata(producers.get(name), card_root, card_steps))
        out[name] = md
    return out


def artifact_metadata(
    flow_name: str,
    run_id: str,
    end_task_id: str,
    artifact: str,
    datastore_type: str,
    datastore_root: str | None,
    *,
    card_root: str | None = None,
    card_steps: Collection[str] | None = None,
) -> dict[str, Any] | None:
    """One artifact's metadata (see `artifacts_metadata`); None when the end task lacks it."""
    return artifacts_metadata(
        flow_name,
        run_id,
        end_task_id,
        [artifact],
        datastore_type,
        datastore_root,
        card_root=card_root,
        card_steps=card_steps,
    )[artifact]


def value_preview(value: Any) -> dict[str, Any]:
    """A small value as the asset page can show it: numbers, text, JSON, a DataFrame's
    schema and first rows, else a repr. Never raises: odd values give `preview_error`."""
    try:
        if isinstance(value, _Unreadable):
            return {"metaflow/preview_error": MetadataValue.text(value.reason)}
        if isinstance(value, bool):
            return {"metaflow/value": MetadataValue.bool(value)}
        if isinstance(value, numbers.Integral):
            return {"metaflow/value": MetadataValue.int(int(value))}
        if isinstance(value, numbers.Real):
            return {"metaflow/value": MetadataValue.float(float(value))}
        if isinstance(value, str):
            return _text_preview("metaflow/value", value)
        if isinstance(value, (list, tuple, dict)):
            found = _json_preview(value)
            if found is not None:
                return found
        if _is_dataframe(value):
            return _frame_preview(value)
        return _text_preview("metaflow/repr", repr(value))
    except Exception as exc:
        return {"metaflow/preview_error": MetadataValue.text(_describe(exc))}


def _text_preview(key: str, text: str) -> dict[str, Any]:
    """Text, cut at MAX_TEXT characters with the cut said both in the text and as a key."""
    if len(text) <= MAX_TEXT:
        return {key: MetadataValue.text(text)}
    note = f"first {MAX_TEXT} of {len(text)} characters"
    return {
        key: MetadataValue.text(f"{text[:MAX_TEXT]}… [truncated: {note}]"),
        "metaflow/preview_truncated": MetadataValue.text(note),
    }


def _json_preview(value: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> dict[str, Any] | None:
    """JSON of a container (None when not JSON-serialisable), its first items when long."""
    try:
        text = json.dumps(list(value) if isinstance(value, tuple) else value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    if len(text) <= MAX_JSON:
        return {"metaflow/value": MetadataValue.json(json.loads(text))}
    items = list(value.items()) if isinstance(value, dict) else list(value)
    keep = len(items)
    while keep:
        keep //= 2
        part = dict(items[:keep]) if isinstance(value, dict) else items[:keep]
        text = json.dumps(part, allow_nan=False)
        if len(text) <= MAX_JSON:
            break
    return {
        "metaflow/value": MetadataValue.json(json.loads(text)),
        "metaflow/preview_truncated": MetadataValue.text(f"first {keep} of {len(items)} items"),
    }


def _is_dataframe(value: Any) -> bool:
    """A pandas DataFrame, recognised without importing pandas (the value brought it)."""
    cls = type(value)
    return cls.__name__ == "DataFrame" and cls.__module__.split(".")[0] == "pandas"


def _frame_preview(frame: Any) -> dict[str, Any]:
    """The DataFrame's columns (the asset page's column schema), row count, first rows."""
    schema = TableSchema(
        columns=[TableColumn(str(name), str(dtype)) for name, dtype in frame.dtypes.items()]
    )
    names = [c.name for c in schema.columns]
    rows = [
        TableRecord(dict(zip(names, (_cell(v, str) for v in row), strict=True)))
        for row in frame.head(FRAME_ROWS).itertuples(index=False, name=None)
    ]
    return {
        "dagster/column_schema": MetadataValue.table_schema(schema),
        "dagster/row_count": MetadataValue.int(len(frame)),
        "metaflow/preview": MetadataValue.table(rows, schema),
    }


def _cell(value: Any, show: Callable[[Any], str] = repr) -> str:
    """A table cell: one short line whatever the value (table records take scalars only)."""
    try:
        text = " ".join((value if isinstance(value, str) else show(value)).split())
    except Exception as exc:
        text = f"<{type(exc).__name__}>"
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _client_md(run: str, artifact: str) -> Any:
    """How to read the value with Metaflow's client, from any namespace."""
    return MetadataValue.md(
        "```python\nfrom metaflow import Run, namespace\n\nnamespace(None)\n"
        f'run = Run("{run}")\nrun.data.{artifact}\n```'
    )


def _where(task_pathspec: str, run: str, name: str) -> dict[str, Any]:
    """Where an artifact is: its pathspec (the end task's plus the name) and the client."""
    return {
        "metaflow/pathspec": MetadataValue.text(f"{task_pathspec}/{name}"),
        "metaflow/client": _client_md(run, name),
    }


def _type_name(info_type: str) -> str:
    """`int` from Metaflow's stored `<class 'int'>`, `pandas.DataFrame` from ...."""
    match = re.fullmatch(r"<(?:class|type) '(.+)'>", info_type or "")
    name = match.group(1) if match else (info_type or "object")
    return name.removeprefix("builtins.")


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _warn(message: str) -> None:
    print(f"dagster-metaflow: {message}", file=sys.stderr)


class _Unreadable:
    """An artifact that could not be loaded (missing module, unpickling error, ...)."""

    def __init__(self, exc: BaseException) -> None:
        self.reason = _describe(exc)


class _EndTask:
    """The end task of a run in Metaflow's datastore (its final attempt), and its run."""

    def __init__(
        self,
        flow_name: str,
        run_id: str,
        end_task_id: str,
        datastore_type: str,
        datastore_root: str | None,
    ) -> None:
        from metaflow.datastore import FlowDataStore
        from metaflow.plugins import DATASTORES

        impl = next((d for d in DATASTORES if d.TYPE == datastore_type), None)
        if impl is None:
            raise RuntimeError(f"Metaflow datastore {datastore_type!r} is not available")
        self.impl = impl
        self.root = datastore_root or impl.get_datastore_root_from_config(lambda *a, **k: None)
        self.flow_name, self.run_id = flow_name, run_id
        self.flow_ds = FlowDataStore(flow_name, storage_impl=impl, ds_root=self.root)
        self.ds = self.flow_ds.get_task_datastore(run_id, END_STEP, end_task_id, mode="r")
        self.task_pathspec = f"{flow_name}/{run_id}/{END_STEP}/{end_task_id}"
        self.info: Mapping[str, Any] = self.ds.ds_metadata["info"]
        self._cards: dict[str, dict[str, Any]] = {}

    def names(self) -> list[str]:
        """The user's artifacts: Metaflow's own start with `_`, plus the flow's `name`."""
        return sorted(n for n in self.ds if not n.startswith("_") and n != "name")

    def type_name(self, name: str) -> str:
        return _type_name(self.info.get(name, {}).get("type", "object"))

    def sizes(self, names: list[str]) -> dict[str, int]:
        """Serialized sizes as stored (an included file's own size); no value is loaded
        but an included file's small descriptor."""
        out: dict[str, int] = {}
        for name in names:
            try:
                out[name] = int(next(self.ds.get_artifact_sizes([name]))[1])
            except Exception:
                out[name] = int(self.info.get(name, {}).get("size", 0))
        return out

    def load(self, names: list[str]) -> dict[str, Any]:
        """Values by name in one batch; one by one when the batch fails, so an unreadable
        value becomes an `_Unreadable` without hiding the others."""
        try:
            loaded = dict(self.ds.load_artifacts(names))
        except Exception:
            loaded = {}
            for name in names:
                try:
                    loaded[name] = next(self.ds.load_artifacts([name]))[1]
                except Exception as exc:
                    loaded[name] = _Unreadable(exc)
        for name, value in loaded.items():
            if self.info.get(name, {}).get("type") == _INCLUDED_FILE:
                try:
                    loaded[name] = value.decode(name)
                except Exception as exc:
                    loaded[name] = _Unreadable(exc)
        return loaded

    def table_rows(self, names: list[str]) -> list[Any]:
        """One row per artifact for the flow asset; a preview only for small values."""
        sizes = self.sizes(names)
        values = self.load([n for n in names if 0 < sizes[n] <= TABLE_PREVIEW_BYTES])
        rows = []
        for name in names:
            value = values.get(name)
            if name not in values:
                preview = ""
            elif isinstance(value, _Unreadable):
                preview = _cell(f"<unreadable: {value.reason}>")
            else:
                preview = _cell(value)
            row: dict[str, str | int] = {"name": name, "type": self.type_name(name)}
            rows.append(TableRecord({**row, "size": sizes[name], "preview": preview}))
        return rows

    def producers(self, names: list[str]) -> dict[str, str]:
        """The task (full pathspec) that produced each artifact: the earliest started task
        of the run storing the same content hash under that name (the datastore is content
        addressed, later steps keep the hash). Skipped for runs over MAX_CARD_TASKS tasks."""
        try:
            tasks = self._run_tasks() if names else []
            started = {t.pathspec: _started(t) for t in tasks}
            out: dict[str, str] = {}
            for name in names:
                sha = self.ds.keys_for_artifacts([name])[0]
                same = [t for t in tasks if name in t and t.keys_for_artifacts([name])[0] == sha]
                if same:
                    first = min(same, key=lambda t: (started[t.pathspec], t.pathspec))
                    out[name] = f"{self.flow_name}/{first.pathspec}"
            return out
        except Exception as exc:
            _warn(f"could not find the steps that produced {self.task_pathspec}'s artifacts: {exc}")
            return {}

    def _run_tasks(self) -> list[Any]:
        """Every task's final attempt in the run; none when the run is too large."""
        storage = self.flow_ds._storage_impl
        steps = storage.list_content([storage.path_join(self.flow_name, self.run_id)])
        tasks = storage.list_content([s.path for s in steps if not s.is_file])
        pathspecs = ["/".join(t.path.rstrip("/").split("/")[-3:]) for t in tasks if not t.is_file]
        if len(pathspecs) > MAX_CARD_TASKS:
            _warn(f"{len(pathspecs)} tasks in {self.flow_name}/{self.run_id}: no producer lookup")
            return []
        return list(self.flow_ds.get_task_datastores(pathspecs=pathspecs))

    def producer_metadata(
        self, producer: str | None, card_root: str | None, card_steps: Collection[str] | None
    ) -> dict[str, Any]:
        """The producing task, and its card when its step has one."""
        if producer is None:
            return {}
        md: dict[str, Any] = {"metaflow/producer": MetadataValue.text(producer)}
        if card_steps is not None and producer.split("/")[2] not in card_steps:
            return md
        if producer not in self._cards:
            try:
                self._cards[producer] = self._card(producer, card_root)
            except Exception as exc:
                _warn(f"could not look up the cards of {producer}: {exc}")
                self._cards[producer] = {}
        return {**md, **self._cards[producer]}

    def _card(self, producer: str, card_root: str | None) -> dict[str, Any]:
        """The task's first card: its file for a local datastore, else how to fetch it.
        Cards live in their own store: `card_root` if known, the datastore root's
        `mf.cards` (what Metaflow's client reads), or the card store's configured root."""
        from metaflow.datastore import FlowDataStore
        from metaflow.metaflow_config import CARD_SUFFIX
        from metaflow.plugins.cards.card_datastore import CardDatastore
        from metaflow.plugins.cards.exception import CardNotPresentException

        roots = [card_root, os.path.join(self.root, CARD_SUFFIX)]
        try:
            roots.append(CardDatastore.get_storage_root(self.impl.TYPE))
        except Exception:
            pass
        for root in dict.fromkeys(r for r in roots if r):
            store = FlowDataStore(self.flow_name, storage_impl=self.impl, ds_root=root)
            cards = CardDatastore(store, pathspec=producer)
            try:
                paths = sorted(cards.extract_card_paths())
            except CardNotPresentException:
                continue
            if paths and self.impl.TYPE == "local":
                return {"metaflow/card": MetadataValue.path(cards.create_full_path(paths[0]))}
            if paths:
                return {"metaflow/card": _card_md(producer)}
        return {}


def _started(task_ds: Any) -> float:
    """When the task's final attempt started (its `attempt.json`); unknown sorts last."""
    try:
        return float(task_ds.load_metadata(["attempt.json"])["attempt.json"]["time"])
    except Exception:
        return float("inf")


def _card_md(task_pathspec: str) -> Any:
    return MetadataValue.md(
        "```python\nfrom metaflow import Task, namespace\nfrom metaflow.cards import get_cards\n\n"
        f'namespace(None)\nget_cards(Task("{task_pathspec}"))[0]\n```'
    )
