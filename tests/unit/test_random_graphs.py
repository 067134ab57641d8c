"""Property: any random valid flow compiles to valid Python that Dagster accepts."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
from dagster import Definitions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent.parent))
from shapegen import generate, random_flow  # noqa: E402

from dagster_metaflow.codegen import render  # noqa: E402
from dagster_metaflow.ir import IROptions, build_flow_ir  # noqa: E402
from dagster_metaflow.runtime.ids import op_nodes


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The flows and definitions files of this module's examples (pytest keeps the last
    three sessions' temp directories, not every one)."""
    return tmp_path_factory.mktemp("random")


def _load(path: Path, name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=10**6))
def test_random_flow_compiles_and_dagster_accepts_it(out_dir: Path, seed: int) -> None:
    from metaflow.graph import FlowGraph

    cls_name, src = random_flow(seed)
    flow_file = out_dir / f"random_{seed}.py"
    flow_file.write_text(src)
    cls = getattr(_load(flow_file, f"random_{seed}"), cls_name)
    graph = FlowGraph(cls)
    ir = build_flow_ir(cls, graph, IROptions(job_name=cls_name, flow_file=flow_file.name))
    text = render(ir)
    ast.parse(text)
    out = out_dir / f"random_{seed}_dagster.py"
    out.write_text(text)
    defs = _load(out, f"random_{seed}_dagster").defs
    job = defs.resolve_job_def(cls_name)
    step_ops = {n for n in op_nodes(job.graph) if n.startswith("op_")}
    assert step_ops == {s.op_name for s in ir.steps}
    # a code server loads the whole repository, and a dg project holds several flows: the
    # same shape deployed twice (another job name) must share one repository
    twin = dataclasses.replace(ir, job_name=f"{cls_name}_twin", flow_name=f"{cls_name}Twin")
    twin_out = out_dir / f"random_{seed}_twin_dagster.py"
    twin_out.write_text(render(twin))
    merged = Definitions.merge(defs, _load(twin_out, f"random_{seed}_twin_dagster").defs)
    Definitions.validate_loadable(merged)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=10**6), st.booleans())
def test_random_flow_with_loops_or_a_replaced_body_compiles(out_dir: Path, seed: int, replace_body: bool) -> None:
    """Loops (whose exits rejoin) and bodies replaced by a decorator: the graph is the same
    static graph, and the generated FLOW records every step's transitions for the check."""
    from metaflow.graph import FlowGraph

    flow = generate(seed, loops=True, replace_body=replace_body)
    name = f"loops_{seed}_{int(replace_body)}"
    flow_file = out_dir / f"{name}.py"
    flow_file.write_text(flow.source)
    cls = getattr(_load(flow_file, name), flow.cls)
    graph = FlowGraph(cls)
    ir = build_flow_ir(cls, graph, IROptions(job_name=flow.cls, flow_file=flow_file.name))
    out = out_dir / f"{name}_dagster.py"
    out.write_text(render(ir))
    module = _load(out, f"{name}_dagster")
    job = module.defs.resolve_job_def(flow.cls)
    assert {n for n in op_nodes(job.graph) if n.startswith("op_")} == {s.op_name for s in ir.steps}
    assert dict(module.FLOW.transitions) == {n.name: tuple(n.out_funcs) for n in graph}
    assert set(module.FLOW.switch_steps) == {n.name for n in graph if n.type == "split-switch"}
