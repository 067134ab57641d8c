"""IR building and code generation without running anything.

Snapshots live in tests/snapshots/*.py.snap; regenerate them with
`UPDATE_SNAPSHOTS=1 pytest tests/unit/test_codegen.py` and review the diff.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import load_flow_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_metaflow import naming
from dagster_metaflow.automation import AutomationIR, TriggerIR
from dagster_metaflow.codegen import py, render
from dagster_metaflow.ir import (
    FlowIR,
    IRError,
    IROptions,
    ParameterIR,
    RetrySpec,
    StepIR,
    build_flow_ir,
    reserved_config_fields,
)
from dagster_metaflow.notifications import Notifications
from dagster_metaflow.runtime.ids import op_nodes

FLOWS = Path(__file__).parent.parent / "flows"
SNAPSHOTS = Path(__file__).parent.parent / "snapshots"


def load_flow(filename: str) -> Any:
    return load_flow_class(filename)


def ir_for(filename: str, **opts: Any) -> FlowIR:
    from metaflow.graph import FlowGraph

    cls = load_flow(filename)
    automation = opts.pop("automation", None)  # decorators as the CLI would have read them
    options = IROptions(
        job_name=opts.pop("job_name", cls.__name__),
        flow_file=filename,
        top_level_args=("--quiet", "--metadata=local", "--environment=local"),
        regenerate_command=f"python {filename} dagster create",
        tool_version="test",
        datastore_root="/data/.metaflow",
        **opts,
    )
    ir = build_flow_ir(cls, FlowGraph(cls), options)
    return ir if automation is None else dataclasses.replace(ir, automation=automation)


def load_module(text: str, tmp_path: Path, name: str = "gen_defs") -> ModuleType:
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- snapshots -----------------------------------------------------------------------------

SNAPSHOT_CASES = {
    "hello_flow": ("hello_flow.py", {}),
    "params_flow": ("params_flow.py", {}),
    "retry_flow": ("retry_flow.py", {"tags": ("team:ml", "x y"), "workflow_timeout": 3600}),
    "linear_forkserver": ("linear_flow.py", {"executor": "forkserver", "max_workers": 4}),
    "nested_switch": ("shapes/nested_switch_flow.py", {}),
    "nested_chunked": ("shapes/nested2_flow.py", {}),  # the inner foreach chunks
    "recursive": ("shapes/recursive_flow.py", {}),
    "loop_in_foreach_rejoin": ("shapes/loop_in_foreach_rejoin_flow.py", {}),
    "parallel": ("shapes/parallel_flow.py", {}),
    # a top-level switch deciding whether foreaches run: it marks the branch not taken
    "open_switch_foreaches": ("open_switch_foreaches_flow.py", {}),
    "asset_up": ("asset_up_flow.py", {"assets": ("model", "score"), "owner": "alice"}),
    "linear_asset_automation": (
        "linear_flow.py",
        {
            "asset_automation": True,
            "owner": "ann@example.com",
            "automation": AutomationIR(
                triggers=(
                    TriggerIR(name="metaflow.Up.end", kind="run", flow="Up"),
                    TriggerIR(name="data.ready"),
                )
            ),
        },
    ),
    "linear_celery": (
        "linear_flow.py",
        {"executor": "celery", "executor_config": {"broker": "redis://127.0.0.1:6379/0"}},
    ),
    "failing_notified": (
        "failing_flow.py",
        {
            "notifications": Notifications(
                on_error=True,
                on_success=True,
                slack_webhook_url="env:SLACK_HOOK",
                pager_duty_integration_key='k"ey\n',
                incident_io_api_key="env:IIO",
                incident_io_alert_source_config_id="01GW2G3V0S59R238FAHPDS1R66",
                incident_io_metadata={"team": "ml", "odd key'\"": "a=b\n"},
            )
        },
    ),
}


@pytest.mark.parametrize("case", sorted(SNAPSHOT_CASES))
def test_snapshot(case: str) -> None:
    filename, opts = SNAPSHOT_CASES[case]
    text = render(ir_for(filename, **opts))
    snap = SNAPSHOTS / f"{case}.py.snap"
    if os.environ.get("UPDATE_SNAPSHOTS") or not snap.exists():
        snap.parent.mkdir(exist_ok=True)
        snap.write_text(text)
    assert text == snap.read_text(), f"generated code changed; review and UPDATE_SNAPSHOTS=1 ({snap})"


def test_deterministic() -> None:
    assert render(ir_for("hello_flow.py")) == render(ir_for("hello_flow.py"))


@pytest.mark.parametrize("case", sorted(SNAPSHOT_CASES))
def test_generated_definitions_load_in_dagster(case: str, tmp_path: Path) -> None:
    filename, opts = SNAPSHOT_CASES[case]
    ir = ir_for(filename, **opts)
    module = load_module(render(ir), tmp_path, f"gen_{case}")
    module.defs.validate_loadable(module.defs)  # the whole repository, as a code server loads it
    job = module.defs.resolve_job_def(ir.job_name)
    nodes = set(op_nodes(job.graph))  # inside the flow's graph asset
    steps = {s.op_name for s in ir.steps}
    assert steps <= nodes
    assert all(n.startswith(("fanout_", "regroup_", "chunk_")) for n in nodes - steps)


# -- IR details ----------------------------------------------------------------------------


def test_ir_shapes_and_decorators() -> None:
    ir = ir_for("hello_flow.py")
    kinds = {s.name: (s.kind, s.foreach_depth) for s in ir.steps}
    assert kinds["start"] == ("foreach", 0)
    assert kinds["square"] == ("linear", 1)
    assert kinds["join"] == ("join", 0) and ir.step("join").join_kind == "foreach"
    assert ir.step("merge").join_kind == "static"
    assert [s.name for s in ir.steps][0] == "start" and ir.steps[-1].name == "end"

    retry = ir_for("retry_flow.py").step("process")
    assert retry.retry == RetrySpec(max_retries=2, delay_seconds=None)
    assert retry.timeout_seconds == 120 and retry.max_user_code_retries == 2
    assert dict(retry.env) == {"MY_VAR": "hello", "OTHER": "world"}


def test_ir_parameters() -> None:
    params = {p.name: p for p in ir_for("params_flow.py").parameters}
    assert params["learning-rate"].field_name == "learning_rate"
    assert params["learning-rate"].env_var == "METAFLOW_INIT_LEARNING_RATE"
    assert params["needed"].required and params["needed"].type == "int"
    assert params["config-json"].type == "json" and params["config-json"].default == '{"a": [1, 2]}'
    assert params["flag"].type == "bool" and params["flag"].default is False
    assert not params["maybe"].required and params["maybe"].default is None


def test_retry_delay_only_when_user_wrote_it() -> None:
    from metaflow import FlowSpec, retry, step
    from metaflow.graph import FlowGraph

    class DelayFlow(FlowSpec):
        @retry(times=3, minutes_between_retries=2)
        @step
        def start(self):
            self.next(self.end)

        @retry(times=1, minutes_between_retries=0)
        @step
        def end(self):
            pass

    ir = build_flow_ir(DelayFlow, FlowGraph(DelayFlow), IROptions(job_name="D", flow_file="d.py"))
    assert ir.step("start").retry == RetrySpec(3, 120)
    assert ir.step("end").retry == RetrySpec(1, None)
    text = render(ir)
    assert "RetryPolicy(max_retries=3, delay=120)" in text and "RetryPolicy(max_retries=1)" in text


def test_decorators_needing_runtime_hooks_are_refused_task_side_ones_accepted() -> None:
    from metaflow import FlowSpec, step
    from metaflow.decorators import StepDecorator
    from metaflow.graph import FlowGraph

    class TaskSide(StepDecorator):
        name = "task_side"

        def task_post_step(self, *args: Any) -> None:
            pass

    class NeedsRuntime(StepDecorator):
        name = "mystery"

        def runtime_task_created(self, *args: Any) -> None:
            pass

    class CtxHook(StepDecorator):
        name = "ctx_hook"
        runtime_finished_ctx = staticmethod(lambda *a: None)

    class RefusedFlow(FlowSpec):
        @step
        def start(self):
            self.next(self.end)

        @step
        def end(self):
            pass

    graph = FlowGraph(RefusedFlow)
    graph["start"].decorators.append(TaskSide())
    build_flow_ir(RefusedFlow, graph, IROptions(job_name="R", flow_file="r.py"))
    graph["end"].decorators.append(NeedsRuntime())
    with pytest.raises(IRError, match=r"step 'end': decorator @mystery needs Metaflow's local runtime hook runtime_task_created\(\)"):
        build_flow_ir(RefusedFlow, graph, IROptions(job_name="R", flow_file="r.py"))
    graph["end"].decorators[-1] = CtxHook()
    with pytest.raises(IRError, match=r"@ctx_hook needs Metaflow's local runtime hook runtime_finished_ctx\(\)"):
        build_flow_ir(RefusedFlow, graph, IROptions(job_name="R", flow_file="r.py"))


def test_metaflow_step_decorators_are_handled_or_refused_with_a_reason() -> None:
    from metaflow import FlowSpec, step
    from metaflow.graph import FlowGraph
    from metaflow.plugins import STEP_DECORATORS

    class DecoratedFlow(FlowSpec):
        @step
        def start(self):
            self.next(self.end)

        @step
        def end(self):
            pass

    opts = IROptions(job_name="D", flow_file="d.py", datastore_type="s3")
    outcomes = {}
    for cls in STEP_DECORATORS:
        graph = FlowGraph(DecoratedFlow)
        deco = cls()
        graph["start"].decorators.append(deco)
        try:
            build_flow_ir(DecoratedFlow, graph, opts)
            outcomes[cls.name] = "ok"
        except IRError as exc:
            outcomes[cls.name] = str(exc)
        finally:
            graph["start"].decorators.remove(deco)
    refused = {"argo_workflows_internal", "step_functions_internal", "airflow_internal"}
    assert {n for n, o in outcomes.items() if o != "ok"} == refused, outcomes
    assert outcomes["argo_workflows_internal"] == (
        "step 'start': decorator @argo_workflows_internal is not supported: "
        "it belongs to Metaflow's Argo Workflows integration"
    )
    # launched by their runtime hooks, as under `flow.py run` (tests/unit/test_remote_compute.py)
    assert {"kubernetes", "batch", "conda", "pypi"} <= {n for n, o in outcomes.items() if o == "ok"}


# -- hostile names and values --------------------------------------------------------------

HOSTILE_STEPS = ["start", "input", "config", "context", "op_end", "class_", "defs", "FLOW", "TAGS",
                 "item", "job", "op", "Path", "schritt_ä", "end"]
HOSTILE_DEFAULTS: list[Any] = [
    'a "quoted" \'value\'', '"""', "back\\slash\\", "line\nbreak", "ünï©ødé", "{{ jinja }}", "%s",
    float("inf"), float("-inf"), float("nan"), -0.0, 10**30, True, None, "",
]


def _linear_ir(step_names: list[str], params: list[ParameterIR]) -> FlowIR:
    ops = naming.op_names(step_names)
    steps = []
    for i, name in enumerate(step_names):
        kind = "start" if i == 0 else "end" if i == len(step_names) - 1 else "linear"
        steps.append(
            StepIR(
                name=name, op_name=ops[name], kind=kind,  # type: ignore[arg-type]
                next_steps=(step_names[i + 1],) if i + 1 < len(step_names) else (),
                in_steps=(step_names[i - 1],) if i else (), foreach_depth=0, split_parents=(),
                doc='Doc with """ quotes and \\ backslash',
                env=(("WEIRD", 'x"y\'z\\'),),
            )
        )
    return FlowIR(
        flow_name="Weird_Flow", job_name="Weird_Flow", flow_file="we'ird \"flow\".py",
        start_step=step_names[0], end_step=step_names[-1], steps=tuple(steps),
        parameters=tuple(params), tags=("t'ag", 'q"uote'), doc="Flow doc \"\"\" with quotes",
        regenerate_command="python 'x y.py' dagster create",
    )


def _param(name: str, default: Any, taken: set[str]) -> ParameterIR:
    typ = "float" if isinstance(default, float) else "bool" if isinstance(default, bool) else (
        "int" if isinstance(default, int) else "str")
    return ParameterIR(
        name=name, field_name=naming.config_field_name(name, taken), type=typ,  # type: ignore[arg-type]
        required=False, has_default=default is not None, default=default, help='help "with" quotes\n',
    )


def test_hostile_names_and_defaults_compile_and_load(tmp_path: Path) -> None:
    taken = reserved_config_fields()
    names = ["class", "my-param", "from", "config", "model_config", "x" * 100, "Ä-b", "def",
             "json", "copy", "_hidden", "9lives", "-"]
    params = [_param(n, HOSTILE_DEFAULTS[i % len(HOSTILE_DEFAULTS)], taken) for i, n in enumerate(names)]
    params += [_param(f"p{i}", d, taken) for i, d in enumerate(HOSTILE_DEFAULTS)]
    ir = _linear_ir(HOSTILE_STEPS, params)
    text = render(ir)
    ast.parse(text)
    module = load_module(text, tmp_path, "hostile_defs")
    job = module.defs.resolve_job_def("Weird_Flow")
    assert len(op_nodes(job.graph)) == len(HOSTILE_STEPS)
    assert len(set(op_nodes(job.graph))) == len(HOSTILE_STEPS)
    assert module.FLOW.file == "we'ird \"flow\".py"
    cfg_fields = getattr(module, ir.config_class_name).model_fields
    assert cfg_fields["p7"].default == float("inf") and math.isnan(cfg_fields["p9"].default)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5, unique_by=str.lower),
    st.lists(st.one_of(st.text(max_size=20), st.floats(), st.integers(), st.booleans(), st.none()),
             min_size=1, max_size=5),
)
def test_any_parameter_name_and_default_is_valid_python(names: list[str], defaults: list[Any]) -> None:
    taken = reserved_config_fields()
    params = [_param(n, defaults[i % len(defaults)], taken) for i, n in enumerate(names)]
    text = render(_linear_ir(["start", "end"], params))
    tree = ast.parse(text)
    compile(tree, "<generated>", "exec")


@given(st.one_of(st.text(), st.floats(), st.integers(), st.booleans(), st.none(),
                 st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)))
def test_py_literal_roundtrip(value: Any) -> None:
    back = eval(py(value), {})  # noqa: S307 - the point of the test
    if isinstance(value, float) and math.isnan(value):
        assert math.isnan(back)
    else:
        assert back == value and type(back) is type(value)


def test_parallel_compiles_to_one_control_op_and_mapper_join() -> None:
    text = render(ir_for("shapes/parallel_flow.py"))
    assert 'ubf_context="ubf_control"' in text  # @parallel step: one control task
    assert "_mapper_tasks(upstream)" in text  # its join reads the control's mapper tasks
    assert "DynamicOut" not in text  # num_parallel does not fan out in Dagster


def test_create_guard_reports_what_dagster_refuses(tmp_path: Path) -> None:
    from dagster_metaflow.definitions_file import dagster_load_problem

    good = render(ir_for("hello_flow.py"))
    assert dagster_load_problem(good, str(tmp_path / "out.py"), "HelloFlow") is None
    bad = good.replace(
        'join = op_join.alias("op_join")(square_each.collect(), square_chunk_each.collect())',
        'join = op_join.alias("op_join")([square_each], square_chunk_each.collect())',
    )
    assert bad != good
    problem = dagster_load_problem(bad, str(tmp_path / "out.py"), "HelloFlow")
    assert problem is not None and problem.startswith("DagsterInvalidDefinitionError")


HOSTILE_TEXT = st.lists(
    st.sampled_from(list("ab'\"\\\n\r\t #{}%é\u2028\x00") + ['"""', "'''", "\\N", "\\u", "{{", "{%"]),
    max_size=12,
).map("".join)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tags=st.lists(HOSTILE_TEXT, max_size=3),
    namespace=st.one_of(st.none(), HOSTILE_TEXT),
    flow_file=HOSTILE_TEXT.filter(bool),
    regenerate=HOSTILE_TEXT,
    output_name=HOSTILE_TEXT,
    env_value=HOSTILE_TEXT,
    owner=HOSTILE_TEXT,
    config_text=HOSTILE_TEXT,
    doc=HOSTILE_TEXT,
)
def test_user_values_never_escape_generated_source(
    tags: list[str], namespace: str | None, flow_file: str, regenerate: str, output_name: str,
    env_value: str, owner: str, config_text: str, doc: str,
) -> None:
    """Tags, namespace, paths, commands, owner, config text, docstrings: whatever they hold,
    the file is valid Python, runs nothing, and the values come back unchanged."""
    import dataclasses

    base = _linear_ir(["start", "end"], [])
    steps = tuple(dataclasses.replace(s, doc=doc) for s in base.steps)
    ir = dataclasses.replace(
        base, tags=tuple(tags), namespace=namespace, flow_file=flow_file, regenerate_command=regenerate,
        output_name=output_name, environment=(("METAFLOW_DEFAULT_X", env_value),), owner=owner,
        production_token=owner, config_values=config_text or None, steps=steps, doc=doc,
    )
    text = render(ir)
    tree = ast.parse(text)
    docstring = ast.get_docstring(tree, clean=False) or ""
    assert f"Regenerate:  {regenerate}\n" in docstring and f"Flow file:   {flow_file}\n" in docstring
    flow_call = next(
        n.value for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "FLOW"
    )
    assert isinstance(flow_call, ast.Call)
    kw = {k.arg: k.value for k in flow_call.keywords}
    assert ast.literal_eval(kw["file"]) == flow_file
    assert ast.literal_eval(kw["namespace"]) == namespace
    assert ast.literal_eval(kw["owner"]) == owner
    assert ast.literal_eval(kw["environment"]) == {"METAFLOW_DEFAULT_X": env_value}
    if config_text:
        assert ast.literal_eval(kw["config_values"]) == config_text
    tags_node = next(
        n.value for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "TAGS"
    )
    assert ast.literal_eval(tags_node) == tags
    # nothing but imports, assignments, classes and functions at top level: no code runs
    allowed = (ast.Expr, ast.ImportFrom, ast.Import, ast.Assign, ast.FunctionDef, ast.ClassDef)
    assert all(isinstance(n, allowed) for n in tree.body)
    assert all(isinstance(n.value, ast.Constant) for n in tree.body if isinstance(n, ast.Expr))


def test_executor_settings_are_defaults_a_launch_can_override(tmp_path: Path) -> None:
    from dagster import validate_run_config

    from dagster_metaflow.runtime.engines import executor_with_defaults

    ir = ir_for("linear_flow.py", max_workers=3, workflow_timeout=60)
    job = load_module(render(ir), tmp_path, "gen_exec_defaults").defs.resolve_job_def(ir.job_name)
    resolved = validate_run_config(job, {})["execution"]
    settings = next(iter(resolved.values()))
    assert (settings["max_concurrent"], settings["workflow_timeout"]) == (3, 60)
    resolved = validate_run_config(job, {"execution": {"config": {"max_concurrent": 1}}})["execution"]
    assert next(iter(resolved.values()))["max_concurrent"] == 1
    with pytest.raises(ValueError, match="has no config field 'max_workers'"):
        executor_with_defaults(job.executor_def, {"max_workers": 2})


@pytest.mark.parametrize("executor", ["multiprocess", "forkserver", "in_process"])
def test_dagster_executors_get_the_run_end_and_keep_their_config(tmp_path: Path, executor: str) -> None:
    """@exit_hook and the end check for every executor: Dagster's own are wrapped, same name,
    same config schema (a launch still overrides the baked defaults)."""
    from dagster import validate_run_config

    ir = ir_for("linear_flow.py", executor=executor, max_workers=3)
    source = render(ir)
    assert "executor_def=with_metaflow_run_end(" in source
    job = load_module(source, tmp_path, f"gen_run_end_{executor}").defs.resolve_job_def(ir.job_name)
    assert job.executor_def.name == {"in_process": "in_process"}.get(executor, "multiprocess")
    if executor != "in_process":
        resolved = validate_run_config(job, {})["execution"]
        assert next(iter(resolved.values()))["max_concurrent"] == 3
        resolved = validate_run_config(job, {"execution": {"config": {"max_concurrent": 1}}})["execution"]
        assert next(iter(resolved.values()))["max_concurrent"] == 1


def _render_with_cache(ir: FlowIR, cache: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """`render` as a new process would: no template compiled in memory yet."""
    from dagster_metaflow import codegen

    monkeypatch.setattr(codegen._ENV, "bytecode_cache", cache)
    codegen._ENV.cache.clear()  # type: ignore[union-attr]
    return render(ir)


def test_templates_compiled_once_render_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jinja's compiled templates are kept between `create`s; a file rendered from the kept
    ones is the file rendered from the templates."""
    from dagster_metaflow.codegen import _TemplateCache

    ir = ir_for("chunked_flow.py")
    cache = _TemplateCache(str(tmp_path), "__dagster_metaflow_%s.cache")
    cold = _render_with_cache(ir, cache, monkeypatch)
    assert len(list(tmp_path.glob("__dagster_metaflow_*.cache"))) == 2  # both templates
    warm = _render_with_cache(ir, cache, monkeypatch)
    assert warm == cold == _render_with_cache(ir, None, monkeypatch)


def test_a_template_cache_that_cannot_be_written_is_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_metaflow.codegen import _TemplateCache

    ir = ir_for("chunked_flow.py")
    gone = _TemplateCache(str(tmp_path / "missing"), "__dagster_metaflow_%s.cache")
    assert _render_with_cache(ir, gone, monkeypatch) == _render_with_cache(ir, None, monkeypatch)


def test_template_cache_files_are_named_for_what_compiles_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jinja checks a cached template against its source only: compiled under other options
    (or another Jinja or Python), it is another file."""
    from dagster_metaflow import codegen

    before = codegen._template_cache()
    monkeypatch.setitem(codegen._OPTIONS, "lstrip_blocks", False)
    after = codegen._template_cache()
    assert isinstance(before, codegen._TemplateCache) and isinstance(after, codegen._TemplateCache)
    assert before.pattern != after.pattern
