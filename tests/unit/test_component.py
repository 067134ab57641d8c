"""The dg component without dg: its resolvers, what it asks the compile for, its cache key
(tests/e2e/test_dg.py runs the real `dg` and `create-dagster`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_metaflow import component, component_cache
from dagster_metaflow.component import MetaflowFlowComponent


def _ctx(field: str) -> Any:
    return dg.ResolutionContext.default().at_path("attributes").at_path(field)


def test_choices_and_settings_match_the_cli_and_compiler() -> None:
    from dagster_metaflow import cli, compiler

    assert component.EXECUTORS == cli.EXECUTORS
    assert component.IDENTITIES == cli.IDENTITIES
    assert component_cache.BAKE_PREFIXES == compiler.BAKE_PREFIXES


def test_the_package_lists_the_component_for_dg() -> None:
    import dagster_metaflow

    assert "MetaflowFlowComponent" in dir(dagster_metaflow)
    assert dagster_metaflow.MetaflowFlowComponent is MetaflowFlowComponent


@pytest.mark.parametrize(
    "resolver, field, value, expected",
    [
        (component._positive_int, "max_workers", "{{ 2 + 2 }}", 4),
        (component._positive_int, "max_workers", 8, 8),
        (component._bool, "production", "True", True),
        (component._bool, "production", False, False),
        (component._job_name, "name", "train_job", "train_job"),
        (component._job_name, "name", None, None),
        (component._str_list, "tags", "one", ["one"]),
        (component._decorator_specs, "with", ["retry", "resources:cpu=2,memory=4096"], None),
        (component._executor_config, "executor_config", '{"broker": "redis://x"}', None),
        (component._configs, "config", {"settings": {"team": "a"}, "raw": '{"x": 1}'}, None),
        (component._artifact_names, "assets", ["model", "score"], ["model", "score"]),
        (component._int, "workflow_priority", "-3", -3),
        (
            component._notify,
            "notify",
            {"on_error": True, "incident_io_api_key": "env:K", "incident_io_alert_source_config_id": "S", "incident_io_metadata": {"team": "ml"}},
            {"on_error": True, "incident_io_api_key": "env:K", "incident_io_alert_source_config_id": "S", "incident_io_metadata": ["team=ml"]},
        ),
    ],
)
def test_resolvers_accept(resolver: Any, field: str, value: Any, expected: Any) -> None:
    out = resolver(_ctx(field), value)
    if expected is not None:
        assert out == expected
    if resolver is component._configs:
        assert out == {"settings": '{"team": "a"}', "raw": '{"x": 1}'}
    if resolver is component._executor_config:
        assert out == {"broker": "redis://x"}


@pytest.mark.parametrize(
    "resolver, field, value, message",
    [
        (component._positive_int, "max_workers", "abc", "expected an integer >= 1, got 'abc'"),
        (component._positive_int, "workflow_timeout", "{{ 0 }}", "got 0"),
        (component._positive_int, "max_workers", True, "got True"),
        (component._bool, "production", "maybe", "expected true or false"),
        (component._job_name, "name", "bad-name", "not a valid Dagster name"),
        (component._job_name, "name", "input", "reserved by Dagster"),
        (component._choice(component.EXECUTORS), "executor", "bogus", "expected one of threads"),
        (component._decorator_specs, "with", ["retry:times"], "is not a decorator spec"),
        (component._decorator_specs, "with", ["re try"], "is not a decorator spec"),
        (component._str_list, "tags", [1], "expected a list of non-empty strings"),
        (component._executor_config, "executor_config", "{no", "not valid JSON"),
        (component._configs, "config", ["x"], "expected a mapping"),
        (component._artifact_names, "assets", ["_private"], "is not an artifact name"),
        (component._int, "workflow_priority", "high", "expected an integer"),
        (component._notify, "notify", {"on_error": True}, "need a service"),
        (component._notify, "notify", {"on_eror": True}, "unknown notification option"),
        (component._notify, "notify", ["x"], "expected a mapping"),
        (component._notify, "notify", {"on_error": True, "slack_webhook_url": "https://hooks/x"}, "slack_webhook_url: give env:NAME"),
        (component._notify, "notify", {"on_error": "maybe", "slack_webhook_url": "env:X"}, "expected true or false"),
    ],
)
def test_resolvers_refuse_in_one_line_naming_the_attribute(
    resolver: Any, field: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        resolver(_ctx(field), value)
    text = str(info.value)
    assert text.startswith(f"attributes.{field}: ") and message in text and "\n" not in text


def test_attributes_become_create_options(tmp_path: Path) -> None:
    flow = tmp_path / "flow.py"
    flow.write_text("")
    comp = MetaflowFlowComponent(
        flow_file=str(flow),
        name="train_job",
        tags=["a"],
        config={"settings": '{"team": "t"}'},
        branch="dev",
        assets=["model"],
        automation_condition=True,
        **{"with": ["retry"]},
    )
    assert comp.top_level_options() == [
        "--config-value",
        "settings",
        '{"team": "t"}',
        "--branch",
        "dev",
    ]
    request = comp.compile_request()
    assert request["name"] == "train_job" and request["identity"] == "production"
    assert request["options"]["with_decorators"] == ["retry"]
    assert request["options"]["assets"] == ["model"]
    assert request["options"]["asset_automation"] is True
    assert request["options"]["auto_emit_events"] is True and request["options"]["notifications"] is None
    from dagster_metaflow.compiler import CompileOptions

    CompileOptions(job_name="j", out_file="o.py", **request["options"])  # every key is a field
    entry = component_cache.cache_entry(tmp_path, "flows/train", flow)
    argv = component_cache.compile_command(entry, comp.top_level_options(), request)
    assert argv[1:3] == [str(flow), "--quiet"] and argv[-3:-1] == ["compile-component", "--request"]


def test_cache_key_follows_the_flow_its_modules_and_attributes(tmp_path: Path) -> None:
    flow = tmp_path / "flow.py"
    flow.write_text("print('flow')\n")
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "util.py").write_text("X = 1\n")
    (tmp_path / "data.bin").write_bytes(b"\0" * 10)
    attrs = {"flow_file": str(flow), "max_workers": 16}
    key = component_cache.cache_key(attrs, flow)
    assert component_cache.cache_key(attrs, flow) == key
    (tmp_path / "data.bin").write_bytes(b"\1" * 10)  # not packaged, not a config: same key
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.py").write_text("")
    assert component_cache.cache_key(attrs, flow) == key
    changed = []
    (tmp_path / "helpers" / "util.py").write_text("X = 2\n")
    changed.append(component_cache.cache_key(attrs, flow))
    flow.write_text("print('flow 2')\n")
    changed.append(component_cache.cache_key(attrs, flow))
    changed.append(component_cache.cache_key({**attrs, "max_workers": 4}, flow))
    (tmp_path / "settings.json").write_text("{}")
    changed.append(component_cache.cache_key({**attrs, "max_workers": 4}, flow))
    assert len({key, *changed}) == 5


def test_cache_entry_layout_and_hit(tmp_path: Path) -> None:
    flow = tmp_path / "src" / "train_flow.py"
    entry = component_cache.cache_entry(tmp_path, "flows/train", flow)
    assert entry.definitions_file == tmp_path / ".dagster_metaflow/flows/train/train_flow_dagster.py"
    assert component_cache.cache_entry(tmp_path, "", flow).folder.name == "_root"
    assert not component_cache.cached(entry, "k")
    entry.folder.mkdir(parents=True)
    entry.definitions_file.write_text("")
    entry.key_file.write_text("k\n")
    assert component_cache.cached(entry, "k") and not component_cache.cached(entry, "other")


def test_a_failed_compile_reports_its_last_line() -> None:
    stderr = "    Compile error:\n    Unknown step decorator nosuch.\n\n"
    assert component_cache.last_error_line(stderr) == "Unknown step decorator nosuch."
    assert "without a message" in component_cache.last_error_line("")


@pytest.mark.parametrize(
    "flow_file, folder, name",
    [("train_flow.py", "train", "TrainFlow"), ("flow.py", "score", "ScoreFlow"), ("etl.py", "x", "EtlFlow")],
)
def test_starter_flow_class(flow_file: str, folder: str, name: str) -> None:
    assert component.starter_flow_class(Path(flow_file), Path(folder)) == name
