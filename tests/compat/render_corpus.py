"""Render a corpus of generated definitions files from a checkout: the check that a change
of the compiler leaves every generated file byte-identical.

    git worktree add /tmp/before <rev>
    python tests/compat/render_corpus.py /tmp/before /tmp/corpus-before
    python tests/compat/render_corpus.py . /tmp/corpus-after
    diff -r /tmp/corpus-before /tmp/corpus-after


(a) snapshot cases and hostile hand-built IRs of tests/unit/test_codegen.py,
(b) every flow of tests/flows and tests/flows/shapes with every executor,
(c) random shapes of tests/shapegen.py (fixed seeds), plain, with loops, and mutated
    (hostile step/flow names, parameters, decorator options, automation).
A case that fails to compile is stored as <case>.err with the error's type and message.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import random
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(sys.argv[1]).resolve()
OUT = Path(sys.argv[2]).resolve()
sys.path.insert(0, str(ROOT))
# Metaflow loads its extensions (ours among them) from ROOT only, not also from the
# checkout the venv has installed: two copies of one extension are refused
os.environ["METAFLOW_EXTENSIONS_SEARCH_DIRS"] = str(ROOT)
sys.path.insert(0, str(ROOT / "tests"))
OUT.mkdir(parents=True, exist_ok=True)
FLOWDIR = OUT.parent / f"{OUT.name}-flows"  # generated flow files (kept out of OUT)
FLOWDIR.mkdir(exist_ok=True)

from shapegen import generate  # noqa: E402

from dagster_metaflow import ir as _ir  # noqa: E402
from dagster_metaflow import naming  # noqa: E402
from dagster_metaflow.automation import ExitHooksIR, ScheduleIR, TriggerIR  # noqa: E402
from dagster_metaflow.codegen import render  # noqa: E402
from dagster_metaflow.ir import (  # noqa: E402
    FlowIR,
    ParameterIR,
    RetrySpec,
    StepIR,
    build_flow_ir,
    reserved_config_fields,
)

FLOWS = ROOT / "tests" / "flows"
COUNT = {"ok": 0, "err": 0}

# the IR's options record (renamed IROptions in issue 18)
CompileOptions = getattr(_ir, "IROptions", None) or _ir.CompileOptions


def emit(case: str, fn: Any) -> None:
    try:
        text = render(fn())
    except Exception as exc:  # noqa: BLE001
        (OUT / f"{case}.err").write_text(f"{type(exc).__name__}: {exc}\n")
        COUNT["err"] += 1
        return
    # a config flow compiled outside Metaflow's CLI holds an unresolved config object
    text = re.sub(r" at 0x[0-9a-f]+>", " at 0x?>", text)
    (OUT / f"{case}.py").write_text(text)
    COUNT["ok"] += 1


_loaded: dict[Path, Any] = {}


def load_cls(path: Path) -> Any:
    if path in _loaded:
        return _loaded[path]
    name = "fx_" + "_".join(path.relative_to(path.parents[1]).with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from metaflow import FlowSpec

    cls = next(
        v for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, FlowSpec) and v is not FlowSpec and v.__module__ == name
    )
    _loaded[path] = cls
    return cls


def ir_for(path: Path, flow_file: str, **opts: Any) -> FlowIR:
    from metaflow.graph import FlowGraph

    cls = load_cls(path)
    options = CompileOptions(
        job_name=opts.pop("job_name", cls.__name__),
        flow_file=flow_file,
        top_level_args=("--quiet", "--metadata=local", "--environment=local"),
        regenerate_command=f"python {flow_file} dagster create",
        tool_version="test",
        datastore_root=opts.pop("datastore_root", "/data/.metaflow"),
        **opts,
    )
    graph = FlowGraph(cls)
    init_flow_decorators(cls, graph)
    return build_flow_ir(cls, graph, options)


def init_flow_decorators(cls: Any, graph: Any) -> None:
    """What Metaflow's CLI does before commands run, for the decorators automation reads."""
    from dagster_metaflow.automation import flow_decorators

    for name, decos in flow_decorators(cls).items():
        if name in ("trigger", "trigger_on_finish", "exit_hook"):
            for deco in decos:
                if not getattr(deco, "_dm_inited", False):
                    deco.flow_init(cls.__name__, graph, None, None, None, None, print, {"trigger": None})
                    deco._dm_inited = True


# -- (a) snapshot cases and hostile IRs ------------------------------------------------------
SNAPSHOT_CASES = {
    "hello_flow": ("hello_flow.py", {}),
    "params_flow": ("params_flow.py", {}),
    "retry_flow": ("retry_flow.py", {"tags": ("team:ml", "x y"), "workflow_timeout": 3600}),
    "linear_forkserver": ("linear_flow.py", {"executor": "forkserver", "max_workers": 4}),
    "nested_switch": ("shapes/nested_switch_flow.py", {}),
    "recursive": ("shapes/recursive_flow.py", {}),
    "loop_in_foreach_rejoin": ("shapes/loop_in_foreach_rejoin_flow.py", {}),
    "parallel": ("shapes/parallel_flow.py", {}),
    "linear_celery": (
        "linear_flow.py",
        {"executor": "celery", "executor_config": {"broker": "redis://127.0.0.1:6379/0"}},
    ),
}
for case, (filename, opts) in SNAPSHOT_CASES.items():
    emit(f"a_snap_{case}", lambda f=filename, o=opts: ir_for(FLOWS / f, f, **dict(o)))

HOSTILE_STEPS = ["start", "input", "config", "context", "op_end", "class_", "defs", "FLOW", "TAGS",
                 "item", "job", "op", "Path", "schritt_ä", "end"]
HOSTILE_DEFAULTS: list[Any] = [
    'a "quoted" \'value\'', '"""', "back\\slash\\", "line\nbreak", "ünï©ødé", "{{ jinja }}", "%s",
    float("inf"), float("-inf"), float("nan"), -0.0, 10**30, True, None, "",
]
HOSTILE_TEXT = list("ab'\"\\\n\r\t #{}%é\u2028\x00") + ['"""', "'''", "\\N", "\\u", "{{", "{%"]


def linear_ir(step_names: list[str], params: list[ParameterIR]) -> FlowIR:
    ops = naming.op_names(step_names)
    steps = []
    for i, name in enumerate(step_names):
        kind = "start" if i == 0 else "end" if i == len(step_names) - 1 else "linear"
        steps.append(StepIR(
            name=name, op_name=ops[name], kind=kind,  # type: ignore[arg-type]
            next_steps=(step_names[i + 1],) if i + 1 < len(step_names) else (),
            in_steps=(step_names[i - 1],) if i else (), foreach_depth=0, split_parents=(),
            doc='Doc with """ quotes and \\ backslash', env=(("WEIRD", 'x"y\'z\\'),),
        ))
    return FlowIR(
        flow_name="Weird_Flow", job_name="Weird_Flow", flow_file="we'ird \"flow\".py",
        start_step=step_names[0], end_step=step_names[-1], steps=tuple(steps),
        parameters=tuple(params), tags=("t'ag", 'q"uote'), doc="Flow doc \"\"\" with quotes",
        regenerate_command="python 'x y.py' dagster create",
    )


def param(name: str, default: Any, taken: set[str], help_: str | None = 'help "with" quotes\n',
          required: bool = False) -> ParameterIR:
    typ = "float" if isinstance(default, float) else "bool" if isinstance(default, bool) else (
        "int" if isinstance(default, int) else "str")
    return ParameterIR(
        name=name, field_name=naming.config_field_name(name, taken), type=typ,  # type: ignore[arg-type]
        required=required and default is None, has_default=default is not None, default=default,
        help=help_,
    )


def hostile_params(rng: random.Random | None = None) -> list[ParameterIR]:
    taken = reserved_config_fields()
    names = ["class", "my-param", "from", "config", "model_config", "x" * 100, "Ä-b", "def",
             "json", "copy", "_hidden", "9lives", "-"]
    params = [param(n, HOSTILE_DEFAULTS[i % len(HOSTILE_DEFAULTS)], taken) for i, n in enumerate(names)]
    params += [param(f"p{i}", d, taken) for i, d in enumerate(HOSTILE_DEFAULTS)]
    if rng is not None:
        params = []
        for i in range(rng.randint(0, 5)):
            name = rng.choice(names + [f"q{i}", "alpha", "b-c"]) + ("" if i == 0 else str(i))
            default = rng.choice(HOSTILE_DEFAULTS + [1, 2.5, False, '{"a": 1}'])
            params.append(param(name, default, taken, help_=rng.choice([None, "", "h\"elp", "x"]),
                                required=rng.random() < 0.3))
        if params and rng.random() < 0.3:
            params[0] = dataclasses.replace(params[0], type="json", default='{"a": [1]}', has_default=True)
    return params


emit("a_hostile_linear", lambda: linear_ir(HOSTILE_STEPS, hostile_params()))


def hostile_text(rng: random.Random) -> str:
    return "".join(rng.choice(HOSTILE_TEXT) for _ in range(rng.randint(0, 12)))


for seed in range(12):
    def values_ir(seed: int = seed) -> FlowIR:
        rng = random.Random(seed)
        base = linear_ir(["start", "end"], [])
        doc = hostile_text(rng)
        steps = tuple(dataclasses.replace(s, doc=doc) for s in base.steps)
        owner = hostile_text(rng)
        return dataclasses.replace(
            base, tags=tuple(hostile_text(rng) for _ in range(rng.randint(0, 3))),
            namespace=rng.choice([None, hostile_text(rng)]), flow_file=hostile_text(rng) or "f",
            regenerate_command=hostile_text(rng), output_name=hostile_text(rng),
            environment=(("METAFLOW_DEFAULT_X", hostile_text(rng)),), owner=owner,
            production_token=owner, config_values=hostile_text(rng) or None, steps=steps, doc=doc,
        )
    emit(f"a_values_{seed}", values_ir)
    emit(f"a_params_{seed}", lambda seed=seed: linear_ir(["start", "end"], hostile_params(random.Random(seed))))


def delay_ir() -> FlowIR:
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

    return build_flow_ir(DelayFlow, FlowGraph(DelayFlow), CompileOptions(job_name="D", flow_file="d.py"))


emit("a_delay", delay_ir)


def hand_ir(spec: list[tuple[str, str, tuple[str, ...], tuple[str, ...], int]], **kw: Any) -> FlowIR:
    """An IR from (name, kind, next, in, foreach depth) rows (codegen reads nothing else)."""
    ops = naming.op_names(r[0] for r in spec)
    steps = tuple(
        StepIR(name=n, op_name=ops[n], kind=k, next_steps=nx, in_steps=tuple(sorted(i)),  # type: ignore[arg-type]
               foreach_depth=d, split_parents=(), join_kind=kw.pop(f"join_{n}", None))
        for n, k, nx, i, d in spec
    )
    return FlowIR(flow_name="Hand", job_name="Hand", flow_file="h.py", start_step=spec[0][0],
                  end_step=spec[-1][0], steps=steps, **kw)


emit("a_end_in_region", lambda: hand_ir([
    ("start", "foreach", ("body",), (), 0),
    ("body", "linear", ("end",), ("start",), 1),
    ("end", "end", (), ("body",), 1),
]))
emit("a_levels_error", lambda: hand_ir([
    ("start", "split", ("x", "f"), (), 0),
    ("x", "linear", ("j",), ("start",), 0),
    ("f", "foreach", ("c",), ("start",), 0),
    ("c", "linear", ("j",), ("f",), 1),
    ("j", "join", ("end",), ("x", "c"), 0),
    ("end", "end", (), ("j",), 0),
], join_j="static"))
emit("a_unknown_executor", lambda: hand_ir([
    ("start", "start", ("end",), (), 0), ("end", "end", (), ("start",), 0)], executor="dask"))

# -- (b) every flow x every executor ---------------------------------------------------------
EXECUTORS: dict[str, dict[str, Any]] = {
    "default": {},
    "threads": {"executor": "threads", "workflow_timeout": 600, "max_workers": 3, "tags": ("a:b",),
                "namespace": "user:x", "owner": "me"},
    "multiprocess": {"executor": "multiprocess"},
    "forkserver": {"executor": "forkserver", "max_workers": 2, "workflow_timeout": 60},
    "in_process": {"executor": "in_process", "workflow_timeout": 60},
    "celery": {"executor": "celery", "executor_config": {"broker": "redis://x:1/0"}},
    "celery_noconf": {"executor": "celery"},
    "k8s": {"executor": "k8s", "datastore_type": "s3", "datastore_root": "s3://b/p",
            "executor_config": {"job_namespace": "ns", "max_concurrent": 4}},
    "s3": {"datastore_type": "s3", "datastore_root": "s3://b/p", "config_values": '{"c": 1}',
           "flow_fingerprint": "abc123", "production_token": "tok"},
}
flow_files = sorted(FLOWS.glob("*.py")) + sorted((FLOWS / "shapes").glob("*.py"))
for path in flow_files:
    rel = path.relative_to(FLOWS).as_posix()
    stem = rel.replace("/", "__").removesuffix(".py")
    try:
        load_cls(path)
    except Exception as exc:  # noqa: BLE001
        (OUT / f"b_{stem}.load.err").write_text(f"{type(exc).__name__}: {exc}\n")
        continue
    for ex, opts in EXECUTORS.items():
        emit(f"b_{stem}__{ex}", lambda p=path, r=rel, o=opts: ir_for(p, r, **dict(o)))

# -- (c) random shapes ----------------------------------------------------------------------
POOL = sorted({
    "annotations_", "Path", "Config", "Field", "Definitions", "DynamicOut", "OpExecutionContext",
    "RetryPolicy", "job", "op", "MetaflowFlow", "metaflow_executor", "metaflow_io_manager",
    "metaflow_shared_io_manager", "executor_with_defaults", "with_metaflow_run_end",
    "celery_executor", "k8s_job_executor", "multiprocess_executor", "in_process_executor", "FLOW",
    "TAGS", "_run_step", "_init_run", "_fan_out", "_run_id", "_task_id", "_split_index",
    "_fan_out_all", "_regroup", "_switch", "_run_loop", "_mapper_tasks", "Out", "ScheduleDefinition",
    "DefaultScheduleStatus", "DefaultSensorStatus", "SensorEvaluationContext", "sensor", "Trigger",
    "TRIGGERS", "evaluate_triggers", "defs", "context", "config", "upstream", "upstreams", "run_id",
    "task", "item", "items", "item_2", "each_start", "start_each", "from_0", "to_a", "class_",
    "schritt_ä", "op_end", "str", "list", "int", "float", "tuple", "dict", "result", "input",
    "Random1Flow", "FlowParameters", "fanout_x", "regroup_x", "x_inputs", "x_fanout", "x_each",
    "end_each", "Weird", "_", "__", "ubf", "none", "None_", "True_",
})
LAUNCHERS = [None, None, None, "kubernetes", "batch", "conda", "pypi"]


def rename(ir: FlowIR, rng: random.Random) -> FlowIR:
    """The same graph with hostile step names (and options on the steps)."""
    names = [s.name for s in ir.steps]
    pool = POOL[:]
    rng.shuffle(pool)
    mapping = {n: (pool.pop() if rng.random() < 0.7 else n) for n in names}
    if len(set(mapping.values())) != len(mapping):
        mapping = {n: n for n in names}
    ops = naming.op_names(mapping[n] for n in names)

    def m(n: str) -> str:
        return mapping.get(n, n)

    steps = []
    for s in ir.steps:
        new = dataclasses.replace(
            s, name=m(s.name), op_name=ops[m(s.name)], next_steps=tuple(m(n) for n in s.next_steps),
            in_steps=tuple(sorted(m(n) for n in s.in_steps)),
            split_parents=tuple(m(n) for n in s.split_parents),
            matching_join=m(s.matching_join) if s.matching_join else None,
            switch_cases=tuple((k, m(v)) for k, v in s.switch_cases),
        )
        if rng.random() < 0.5:
            launcher = rng.choice(LAUNCHERS)
            retry = rng.choice([None, RetrySpec(2, None), RetrySpec(3, 120), RetrySpec(1, 5)])
            new = dataclasses.replace(
                new, retry=retry, max_user_code_retries=rng.choice([0, 1, 2]) if retry else 0,
                timeout_seconds=rng.choice([None, 30, 3600]), launcher=launcher,  # type: ignore[arg-type]
                env=rng.choice([(), (("A", "b"),), (("Q", 'x"y'), ("Z", "\n"))]),
                resources=rng.choice([(), (("cpu", "2"), ("memory", "4096"))]),
                decorator_specs=rng.choice([(), ("card:id=x",), ("retry:times=2", "timeout:seconds=3")]),
                has_card=rng.random() < 0.3, doc=rng.choice(["", "Doc 'x' \"\"\"", hostile_text(rng)]),
            )
        steps.append(new)
    automation = ir.automation
    r = rng.random()
    if r < 0.2:
        automation = dataclasses.replace(
            automation, schedule=ScheduleIR(cron="0 * * * *", timezone=rng.choice([None, "Europe/Berlin"]),
                                            metaflow_cron="0 * * * ? *"))
    elif r < 0.4:
        triggers = (TriggerIR(name="ev.one", parameters=(("alpha", "a", True),)),
                    TriggerIR(name="ev'two"))
        if rng.random() < 0.5:
            triggers = (TriggerIR(name="metaflow.Up.end", kind="run", flow="Up",
                                  project=rng.choice([None, "proj"]), branch="main"),)
        automation = dataclasses.replace(automation, triggers=triggers)
    elif r < 0.5:
        automation = dataclasses.replace(
            automation, exit_hooks=ExitHooksIR(on_success=("ok_hook",), on_error=("bad",)),
            project_name="proj", branch_name=rng.choice([None, "user.me"]))
    params = hostile_params(rng)
    if automation.triggers:
        taken = reserved_config_fields()
        params = [param("alpha", 1, taken)]
    flow_name = rng.choice([ir.flow_name, "FLOW", "defs", "op", "Config", "job", "TAGS", "x_schedule"])
    return dataclasses.replace(
        ir, steps=tuple(steps), start_step=m(ir.start_step), end_step=m(ir.end_step),
        parameters=tuple(params), automation=automation, flow_name=flow_name,
        executor=rng.choice(["threads", "threads", "multiprocess", "forkserver", "in_process", "celery", "k8s"]),
        workflow_timeout=rng.choice([None, 100]),
        config_class_name=rng.choice([ir.config_class_name, "FLOW", "Config", "op"]),
    )


def random_ir(seed: int, loops: bool, replace_body: bool) -> FlowIR:
    from metaflow.graph import FlowGraph

    flow = generate(seed, loops=loops, replace_body=replace_body)
    name = f"rnd_{seed}_{int(loops)}_{int(replace_body)}"
    path = FLOWDIR / f"{name}.py"
    path.write_text(flow.source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = getattr(module, flow.cls)
    return build_flow_ir(cls, FlowGraph(cls), CompileOptions(job_name=flow.cls, flow_file=path.name))


for seed in range(160):
    emit(f"c_plain_{seed}", lambda seed=seed: random_ir(seed, False, False))
for seed in range(100):
    emit(f"c_loops_{seed}", lambda seed=seed: random_ir(seed, True, seed % 2 == 1))
for seed in range(200):
    def mutated(seed: int = seed) -> FlowIR:
        rng = random.Random(1000 + seed)
        return rename(random_ir(seed % 130, seed % 3 == 0, False), rng)
    emit(f"c_mut_{seed}", mutated)

print(COUNT)
