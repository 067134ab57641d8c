"""Asset-materialization metadata of a finished Metaflow run (runtime.assets), read from a
real local run of tests/flows/assets_flow.py."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import FLOWS, Workspace
from dagster import Output, TableRecord, deserialize_value, serialize_value

from dagster_metaflow.runtime import assets
from dagster_metaflow.runtime.assets import (
    artifact_metadata,
    artifacts_metadata,
    flow_asset_metadata,
    value_preview,
)

HAS_PANDAS = importlib.util.find_spec("pandas") is not None
USER_ARTIFACTS = {
    "count", "ratio", "flag", "label", "long_text", "config", "items", "big_list",
    "amount", "thing", "blob", "later", "final",
} | ({"frame"} if HAS_PANDAS else set())  # fmt: skip


@pytest.fixture(scope="module")
def run() -> tuple[str, str]:
    """(run id, end task id) of one run of the flow, under the tests' datastore root."""
    root = Path(os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"])
    d = Path(tempfile.mkdtemp(prefix="assets_flow-", dir=root))
    shutil.copy(FLOWS / "assets_flow.py", d / "assets_flow.py")
    ws = Workspace(dir=d, flow=d / "assets_flow.py", dagster_home=d)
    ws.metaflow("run")
    from metaflow import Flow, namespace

    namespace(None)
    latest = Flow("AssetsFlow").latest_run
    assert latest is not None and latest.successful
    return latest.id, latest["end"].task.id


def _meta(run: tuple[str, str], *names: str, **kw: Any) -> dict[str, Any]:
    out = artifacts_metadata("AssetsFlow", run[0], run[1], names, "local", None, **kw)
    return {
        n: md if md is None else {k: getattr(v, "value", v) for k, v in md.items()}
        for n, md in out.items()
    }


def _usable(md: dict[str, Any]) -> None:
    """Dagster accepts the metadata on an output and can store it."""
    Output(1, metadata=md)
    assert deserialize_value(serialize_value(md)) == md  # type: ignore[arg-type]


def test_flow_asset_lists_the_end_steps_artifacts(run: tuple[str, str]) -> None:
    md = flow_asset_metadata("AssetsFlow", run[0], run[1], "local", None, dagster_run_id="d-1")
    _usable(md)
    assert md["metaflow/run_pathspec"].value == f"AssetsFlow/{run[0]}"
    assert md["metaflow/dagster_run"].value == "d-1"
    snippet = md["metaflow/client"].value
    assert f'Run("AssetsFlow/{run[0]}")' in snippet and "namespace(None)" in snippet
    table = md["metaflow/artifacts"].value
    assert [c.name for c in table.schema.columns] == ["name", "type", "size", "preview"]
    rows = {r.data["name"]: r.data for r in table.records}
    assert set(rows) == USER_ARTIFACTS  # no `name`, no `_task_ok`, `_graph_info`, ...
    for row in rows.values():
        assert all(isinstance(v, (str, int)) for v in row.values()), row
    assert rows["count"] == {"name": "count", "type": "int", "size": 5, "preview": "42"}
    assert rows["label"]["preview"] == "hello" and rows["amount"]["type"] == "decimal.Decimal"
    assert rows["blob"]["size"] > 1_000_000 and rows["blob"]["preview"] == ""
    assert rows["thing"]["type"] == "__main__.Thing"
    assert rows["thing"]["preview"].startswith("<unreadable: AttributeError")


def test_flow_asset_of_a_missing_run_reports_instead_of_raising() -> None:
    md = flow_asset_metadata("AssetsFlow", "no-such-run", "3", "local", None)
    assert "metaflow/metadata_error" in md and "metaflow/client" in md
    assert "metaflow/artifacts" not in md
    out = artifacts_metadata("AssetsFlow", "no-such-run", "3", ["x"], "local", None)
    assert "metaflow/metadata_error" in (out["x"] or {})


def test_scalars_where_they_are_and_who_made_them(run: tuple[str, str]) -> None:
    md = _meta(run, "count", "ratio", "flag", "label", "later", "final", "missing")
    end = f"AssetsFlow/{run[0]}/end/{run[1]}"
    assert md["count"] is not None
    assert md["count"]["metaflow/pathspec"] == f"{end}/count"
    assert "run.data.count" in md["count"]["metaflow/client"]
    assert md["count"]["metaflow/type"] == "int" and md["count"]["metaflow/size_bytes"] == 5
    assert md["count"]["metaflow/value"] == 42
    assert md["ratio"]["metaflow/value"] == 0.25  # type: ignore[index]
    assert md["flag"]["metaflow/value"] is True  # type: ignore[index]
    assert md["label"]["metaflow/value"] == "hello"  # type: ignore[index]
    assert md["count"]["metaflow/producer"].startswith(f"AssetsFlow/{run[0]}/start/")
    assert md["later"]["metaflow/producer"].startswith(f"AssetsFlow/{run[0]}/middle/")  # type: ignore[index]
    assert md["final"]["metaflow/producer"] == end  # type: ignore[index]
    assert md["missing"] is None
    assert artifact_metadata("AssetsFlow", run[0], run[1], "nope", "local", None) is None


def test_long_and_container_values(run: tuple[str, str]) -> None:
    md = _meta(run, "long_text", "config", "items", "big_list")
    text = md["long_text"]["metaflow/value"]  # type: ignore[index]
    assert len(text) < 1_100 and "truncated" in text
    assert "50000" in md["long_text"]["metaflow/preview_truncated"]  # type: ignore[index]
    assert md["config"]["metaflow/value"] == {"a": 1, "b": [1, 2], "c": {"d": None}}  # type: ignore[index]
    assert md["items"]["metaflow/value"] == [1, "two", 3.0]  # type: ignore[index]
    part = md["big_list"]["metaflow/value"]  # type: ignore[index]
    assert 0 < len(part) < 100_000 and part == list(range(len(part)))
    assert "of 100000 items" in md["big_list"]["metaflow/preview_truncated"]  # type: ignore[index]


def test_objects_big_values_and_unreadable_ones(run: tuple[str, str]) -> None:
    md = _meta(run, "amount", "thing", "blob")
    assert md["amount"]["metaflow/repr"] == "Decimal('1.50')"  # type: ignore[index]
    thing = md["thing"]
    assert thing is not None and thing["metaflow/type"] == "__main__.Thing"
    assert "Thing" in thing["metaflow/preview_error"]
    blob = md["blob"]
    assert blob is not None and blob["metaflow/type"] == "bytes"
    assert blob["metaflow/size_bytes"] > 1_000_000
    assert not {"metaflow/value", "metaflow/repr", "metaflow/preview_error"} & set(blob)


def test_the_producing_steps_card(run: tuple[str, str]) -> None:
    md = _meta(run, "count", "later", "final")
    card = md["count"]["metaflow/card"]  # type: ignore[index]
    assert card.endswith(".html") and Path(card).is_file()
    assert "/steps/start/" in card
    assert "metaflow/card" not in md["later"] and "metaflow/card" not in md["final"]  # type: ignore[operator]
    only_middle = _meta(run, "count", card_steps=("middle",))
    assert "metaflow/card" not in only_middle["count"]  # type: ignore[operator]
    raw = artifact_metadata("AssetsFlow", run[0], run[1], "count", "local", None)
    assert raw is not None
    _usable(raw)


def test_no_producer_lookup_in_large_runs(
    run: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assets, "MAX_CARD_TASKS", 2)
    md = _meta(run, "count")["count"]
    assert md is not None and md["metaflow/value"] == 42
    assert "metaflow/producer" not in md and "metaflow/card" not in md


@pytest.mark.skipif(not HAS_PANDAS, reason="pandas is not installed")
def test_dataframe_schema_rows_and_preview(run: tuple[str, str]) -> None:
    raw = artifact_metadata("AssetsFlow", run[0], run[1], "frame", "local", None)
    assert raw is not None
    _usable(raw)
    schema = raw["dagster/column_schema"].value
    assert [(c.name, c.type) for c in schema.columns][0] == ("x", "int64")
    assert [c.name for c in schema.columns] == ["x", "y", "z"]
    assert raw["dagster/row_count"].value == 10
    records = raw["metaflow/preview"].value.records
    assert records[1] == TableRecord({"x": "1", "y": "r1", "z": "0.5"}) and len(records) == 5
    assert raw["metaflow/producer"].value.startswith("AssetsFlow/")
    assert "/middle/" in raw["metaflow/producer"].value


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    "value, key, expected",
    [
        ((1, 2), "metaflow/value", [1, 2]),
        ({1: "a"}, "metaflow/value", {"1": "a"}),
        ({(1, 2): "a"}, "metaflow/repr", "{(1, 2): 'a'}"),
        ([math.nan], "metaflow/repr", "[nan]"),
        (None, "metaflow/repr", "None"),
        (b"ab", "metaflow/repr", "b'ab'"),
        (10**30, "metaflow/value", 10**30),
    ],
)
def test_value_preview_kinds(value: Any, key: str, expected: Any) -> None:
    md = value_preview(value)
    assert md[key].value == expected
    _usable(md)


def test_value_preview_never_raises() -> None:
    assert "no repr" in value_preview(_BadRepr())["metaflow/preview_error"].value
    assert "metaflow/preview_truncated" in value_preview("é" * 5000)
