"""The compile API without Metaflow's CLI: a front end fills in a FlowSource and gets the
definitions text and its deployment record (as a `dg` component would)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import load_flow_class

from dagster_metaflow import compiler, runs, values
from dagster_metaflow.deployments import Deployment, ParameterInfo
from dagster_metaflow.errors import CompileError, DagsterMetaflowException

FLOWS = Path(__file__).parent.parent / "flows"


class _NoDatastore:
    """A local datastore that cannot save: compiling warns and records no code package."""

    TYPE = "local"
    datastore_root = "/data/.metaflow"

    def save_data(self, blobs: Any, len_hint: int = 0) -> Any:
        raise OSError("read-only")


def _source(filename: str) -> compiler.FlowSource:
    from metaflow.graph import FlowGraph

    path = FLOWS / filename
    cls = load_flow_class(filename, "compiler")
    cls.name = cls.__name__  # what a FlowSpec instance has
    return compiler.FlowSource(
        flow=cls,
        graph=FlowGraph(cls),
        environment=SimpleNamespace(TYPE="local"),
        flow_datastore=_NoDatastore(),
        logger=print,
        package_suffixes=[".py"],
        metadata_type="local",
        metadata="local@/tmp",
        flow_file=str(path),
        command=(path.name, "dagster", "create"),
    )


def test_compile_flow_without_the_cli(tmp_path: Path) -> None:
    lines: list[str] = []
    options = compiler.CompileOptions(
        job_name="HelloFlow", out_file=str(tmp_path / "hello_dagster.py"), owner="ann"
    )
    compiled = compiler.compile_flow(
        _source("hello_flow.py"), options, lambda line, **kw: lines.append(line)
    )
    assert "HelloFlow" in compiled.text and compiled.ir.job_name == "HelloFlow"
    assert any("could not package the flow's code" in ln for ln in lines)
    dep = compiled.deployment("tok", {})
    assert isinstance(dep, Deployment) and dep.owner == "ann" and dep.production_token == "tok"
    assert dep.start_op == "HelloFlow_steps." + compiled.ir.step("start").op_name
    assert dep.code_package == {}
    assert [p.name for p in dep.parameters] == ["alpha", "n"]
    with pytest.raises(AttributeError):
        options.job_name = "other"  # type: ignore[misc]


def test_compile_refusals_are_compile_errors(tmp_path: Path) -> None:
    source = _source("hello_flow.py")
    out = str(tmp_path / "x.py")
    with pytest.raises(CompileError, match="is for --executor"):
        compiler.compile_flow(
            source, compiler.CompileOptions(job_name="H", out_file=out, executor_config="{}")
        )
    with pytest.raises(CompileError, match="--name"):
        compiler.resolve_job_name("bad name!", "HelloFlow")
    assert compiler.resolve_job_name(None, "HelloFlow", "proj.user.me.HelloFlow").endswith(
        "HelloFlow"
    )


def test_baked_environment_never_writes_secrets() -> None:
    env = {"METAFLOW_DEFAULT_DATASTORE": "s3", "METAFLOW_SERVICE_AUTH_KEY": "x", "HOME": "/root"}
    assert compiler.baked_environment(env) == (("METAFLOW_DEFAULT_DATASTORE", "s3"),)


def test_run_config_sources_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    params = (
        ParameterInfo("alpha", "alpha", "float", False, ""),
        ParameterInfo("n-items", "n", "int", True, ""),
    )
    dep = Deployment("J", "F", "f.py", "d.py", "me", "t", start_op="op_start", parameters=params)
    monkeypatch.setenv("METAFLOW_RUN_N_ITEMS", "4")
    config, given = values.run_config(dep, {"alpha": "0.5"}, ())
    assert config == {"ops": {"op_start": {"config": {"alpha": 0.5, "n-items": 4}}}}
    assert given == {"alpha": 0.5, "n-items": 4}
    config, given = values.run_config(dep, {}, ("n_items=5",), base={"alpha": 1.0}, use_env=False)
    assert config["ops"]["op_start"]["config"] == {"alpha": 1.0, "n-items": 5} and given == {
        "n-items": 5
    }
    with pytest.raises(DagsterMetaflowException, match="no such parameter"):
        values.run_config(dep, {}, ("beta=1",))
    monkeypatch.delenv("METAFLOW_RUN_N_ITEMS")
    with pytest.raises(DagsterMetaflowException, match="missing required parameter 'n-items'"):
        values.run_config(dep, {}, ())


def test_step_of_and_rerun_steps() -> None:
    assert runs.step_of("op_body[2_1]") == "body"
    graph = {
        "a": SimpleNamespace(out_funcs=["b", "c"]),
        "b": SimpleNamespace(out_funcs=["c"]),
        "c": SimpleNamespace(out_funcs=[]),
    }
    assert runs.rerun_steps(graph, "b") == ["b", "c"]
    with pytest.raises(DagsterMetaflowException, match="no step 'z'; its steps: a, b, c"):
        runs.rerun_steps(graph, "z")


def test_import_stays_light() -> None:
    import subprocess

    code = "import sys, dagster_metaflow; print(sorted(m for m in ('metaflow', 'dagster', 'jinja2') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
