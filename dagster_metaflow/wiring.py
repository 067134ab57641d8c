"""How the ops of a flow are connected in the Dagster job: FlowIR -> wiring plan.

Dagster constraints (1.13) that shape this:
- an op may not be downstream of two dynamic outputs, and dynamic outputs cannot be
  nested (an op mapped over a dynamic output cannot itself fan out dynamically);
- items of a fan-in list may not be downstream of a dynamic output;
- an op is skipped when a required input was not produced, except for fan-in lists,
  which are skipped only when every item is missing;
- a function passed to `.map()` may return a tuple of outputs, each collectable.

So the job is organised in *regions*: the ops mapped over one dynamic output (a *stream*).
Top-level foreach steps fan out directly. A foreach inside a region returns a plain value;
a generated `fanout_<step>` op collects those values and fans out again over every
(outer, inner) index pair (composite mapping keys `i_j`). A join whose inputs live in
different streams, and a conditional merge inside a region, go through a `regroup_<step>`
op: it collects its inputs and emits one list per outer index. Every Metaflow task stays its
own op with its own retries and logs; every level runs in parallel; each collect is a
barrier. Pure data in, pure data out: codegen renders the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from . import naming
from .ir import FlowIR, StepIR

InputForm = Literal["none", "single", "list", "named", "lists"]


class WiringError(Exception):
    """A shape that cannot be compiled; the message names the step."""


@dataclass(eq=False)
class Stream:
    """A dynamic output and the region of ops mapped over it."""

    var: str  # top-level variable holding the dynamic output handle
    depth: int  # length of its mapping keys (foreach nesting of its tasks)
    fn: str  # name of the region function passed to .map()
    param: str  # that function's parameter
    source: TopItem | None = None
    lines: list[str] = field(default_factory=list)
    exports: list[Val] = field(default_factory=list)


@dataclass(eq=False)
class Val:
    """An op output handle, in the scope of its stream (None: top level)."""

    var: str
    stream: Stream | None
    outer_var: str | None = None  # name of the mapped output at top level, once exported
    optional: bool = False  # may be skipped by Dagster (after a top-level switch)

    def collected(self) -> str:
        assert self.stream is not None and self.outer_var is not None
        return f"{self.outer_var}.collect()"


@dataclass(eq=False)
class TopItem:
    """One statement of the job body with the streams it needs mapped first."""

    line: str
    needs: list[Stream] = field(default_factory=list)
    order: int = 0


@dataclass
class StepWiring:
    """What one step's op looks like, given where it sits in the job."""

    input_form: InputForm = "single"
    input_names: tuple[str, ...] = ()  # for "named" and "lists"
    in_map: bool = False  # runs inside a region (task id from the mapping key)
    dynamic_out: bool = False  # top-level foreach: the op itself fans out
    switch_outputs: tuple[tuple[str, str], ...] = ()  # (target step, output name)
    # inside a region a switch (a loop too) yields every output (a not-taken marker for
    # the branches not taken): Dagster skips an op whose input was skipped and a collect
    # that is skipped for every key, so joins and merges inside regions (and foreach
    # joins) need every value to exist
    switch_always: bool = False
    ubf_control: bool = False  # @parallel step: one control task that runs the workers
    parallel_join: bool = False  # join of a @parallel step: inputs are its mapper tasks


@dataclass
class HelperOp:
    """A generated op that is not a Metaflow step: fanout_* or regroup_*."""

    kind: Literal["fanout", "regroup"]
    name: str
    step: str  # the foreach step (fanout) or the join/merge step (regroup)
    input_names: tuple[str, ...]
    depth: int  # regroup: key length of the output; fanout: key length of its input


@dataclass
class Plan:
    steps: dict[str, StepWiring]
    helpers: list[HelperOp]
    body: list[str]  # job body lines (indented one level)


class _Builder:
    def __init__(self, ir: FlowIR, taken: set[str]) -> None:
        self.ir = ir
        self.taken = set(taken)
        self.op_names = {s.op_name for s in ir.steps}
        self.wiring: dict[str, StepWiring] = {}
        self.helpers: list[HelperOp] = []
        self.top: list[TopItem] = []
        self.streams: list[Stream] = []
        self.value: dict[str, Val] = {}  # step -> its main output
        self.switch_val: dict[tuple[str, str], Val] = {}  # (switch step, target) -> output
        self.children: dict[str, Stream] = {}  # foreach step -> stream of its children
        self.statement: dict[str, TopItem] = {}  # top-level step -> its statement

    # -- names ------------------------------------------------------------------------------
    def var(self, base: str) -> str:
        return naming.python_identifier(base, self.taken)

    def helper_name(self, base: str) -> str:
        name = naming.to_dagster_alphabet(base)
        return naming.unique(name, self.op_names)

    # -- emission ---------------------------------------------------------------------------
    def emit(self, stream: Stream | None, line: str, needs: list[Stream] | None = None) -> TopItem | None:
        if stream is None:
            item = TopItem(line, needs or [], len(self.top))
            self.top.append(item)
            return item
        stream.lines.append(line)
        return None

    def export(self, val: Val) -> str:
        """Make a region value available at top level (for collect); returns `x.collect()`."""
        assert val.stream is not None
        if val.outer_var is None:
            val.outer_var = self.var(f"{val.var}_each")
            val.stream.exports.append(val)
        return val.collected()

    def new_stream(self, name: str, depth: int, param: str) -> Stream:
        s = Stream(var=name, depth=depth, fn=self.var(f"each_{name}"), param=param)
        self.streams.append(s)
        return s

    # -- inputs -----------------------------------------------------------------------------
    def incoming(self, step: StepIR) -> list[Val]:
        """The value each predecessor passes to `step` (self-loops excluded)."""
        vals = []
        for pred_name in step.in_steps:
            if pred_name == step.name:
                continue
            pred = self.ir.step(pred_name)
            if pred.kind == "foreach" and pred.parallel_foreach:
                vals.append(self.value[pred.name])  # @parallel: no fan-out, one control task
            elif pred.kind == "foreach":
                stream = self.children_of(pred)
                vals.append(Val(stream.param, stream))
            elif pred.kind == "switch":
                vals.append(self.switch_val[(pred.name, step.name)])
            else:
                vals.append(self.value[pred.name])
        return vals

    def children_of(self, foreach: StepIR) -> Stream:
        """The stream of a foreach step's children (fanning out again if it is nested)."""
        if foreach.name in self.children:
            return self.children[foreach.name]
        v = self.value[foreach.name]
        if v.stream is None:  # top-level foreach: its op is the dynamic output
            stream = self.new_stream(v.var, 1, self.var("item"))
            stream.source = self.statement[foreach.name]
        else:
            op = self.helper_name(f"fanout_{foreach.name}")
            self.helpers.append(HelperOp("fanout", op, foreach.name, ("upstreams",), v.stream.depth))
            name = self.var(f"{foreach.name}_fanout")
            stream = self.new_stream(name, v.stream.depth + 1, self.var("item"))
            stream.source = self.emit(None, f"{name} = {op}({self.export(v)})", [v.stream])
        self.children[foreach.name] = stream
        return stream

    def regroup(self, step: StepIR, vals: list[Val], depth: int) -> Val:
        """Collect `vals` (each in some region) and re-emit them grouped per outer index."""
        op = self.helper_name(f"regroup_{step.name}")
        names = tuple(naming.python_identifier(f"from_{i}", set()) for i in range(len(vals)))
        self.helpers.append(HelperOp("regroup", op, step.name, names, depth))
        name = self.var(f"{step.name}_inputs")
        stream = self.new_stream(name, depth, self.var("items"))
        args = ", ".join(self.export(v) for v in vals)
        needs = [v.stream for v in vals if v.stream is not None]
        stream.source = self.emit(None, f"{name} = {op}({args})", needs)
        return Val(stream.param, stream)

    # -- steps ------------------------------------------------------------------------------
    def place(self, step: StepIR) -> None:
        w = StepWiring(ubf_control=step.is_parallel)
        needs: list[Stream] = []  # streams whose collected values this statement uses
        vals = self.incoming(step)
        merging = len(vals) > 1
        optional_in = any(v.optional for v in vals)
        optional_out = False
        if step.name == self.ir.start_step:
            w.input_form, stream, arg = "none", None, ""
        elif step.kind == "join" and any(self.ir.step(p).is_parallel for p in step.in_steps):
            (control,) = vals
            w.input_form, w.parallel_join, stream, arg = "single", True, control.stream, control.var
        elif step.kind == "join" and step.join_kind == "foreach":
            depths = {v.stream.depth if v.stream is not None else 0 for v in vals}
            if len(depths) != 1 or 0 in depths:
                raise WiringError(f"step {step.name!r}: joins branches from different foreach levels")
            (depth,) = depths
            if depth == 1 and len(vals) == 1:
                w.input_form, stream, arg = "list", None, self.export(vals[0])
                needs.append(vals[0].stream)  # type: ignore[arg-type]
            elif depth == 1:
                # switch branches ending the body: one collected list per branch
                w.input_form, stream = "lists", None
                w.input_names = tuple(naming.python_identifier(f"from_{p}", {"context", "config"}) for p in step.in_steps)
                arg = ", ".join(self.export(v) for v in vals)
                needs.extend(v.stream for v in vals if v.stream is not None)
            else:
                grouped = self.regroup(step, vals, depth - 1)
                w.input_form, stream, arg = "list", grouped.stream, grouped.var
        elif merging:
            streams = {id(v.stream) for v in vals}
            top = all(v.stream is None for v in vals)
            if top and (step.kind != "join" or optional_in):
                # a conditional merge, or a join fed by switch branches: Dagster runs a
                # fan-in list unless every item is missing
                w.input_form, stream = "list", None
                arg = "[" + ", ".join(v.var for v in vals) + "]"
            elif len(streams) == 1:
                names = tuple(naming.python_identifier(p, {"context", "config"}) for p in step.in_steps)
                w.input_form, w.input_names = "named", names
                stream, arg = vals[0].stream, ", ".join(v.var for v in vals)
            else:
                depth = step.foreach_depth
                if any(v.stream is None for v in vals) or depth == 0:
                    raise WiringError(
                        f"step {step.name!r}: joins branches from different foreach levels"
                    )
                grouped = self.regroup(step, vals, depth)
                w.input_form, stream, arg = "list", grouped.stream, grouped.var
        else:
            (v,) = vals
            w.input_form, stream, arg = "single", v.stream, v.var
            optional_out = v.optional
        w.in_map = stream is not None

        var = self.var(step.name)
        if step.kind == "switch":
            targets = tuple(t for t in dict.fromkeys(step.next_steps) if t != step.name)
            outs = tuple((t, naming.python_identifier(f"to_{t}", {"result"})) for t in targets)
            w.switch_outputs = outs
            w.switch_always = stream is not None  # a loop too: its exits may rejoin
            out_vars = [self.var(f"{step.name}_to_{t}") for t, _ in outs]
            for (t, _), ov in zip(outs, out_vars, strict=True):
                # a top-level switch's (or loop's) unchosen outputs are skipped
                self.switch_val[(step.name, t)] = Val(
                    ov, stream, optional=optional_out or (not w.switch_always and len(outs) > 1)
                )
            lhs = ", ".join(out_vars)  # one output: the handle itself, not a tuple
            statement = self.emit(stream, f"{lhs} = {step.op_name}({arg})", needs)
        else:
            w.dynamic_out = step.kind == "foreach" and stream is None and not step.parallel_foreach
            statement = self.emit(stream, f"{var} = {step.op_name}({arg})", needs)
        if statement is not None:
            self.statement[step.name] = statement
        self.value[step.name] = Val(var, stream, optional=optional_out)
        self.wiring[step.name] = w

    # -- final ordering -------------------------------------------------------------------------
    def body(self) -> list[str]:
        """Top-level statements, each region's function and map call placed before first use."""
        lines: list[str] = []
        done_items: set[int] = set()
        mapped: set[int] = set()

        def map_stream(s: Stream) -> None:
            if id(s) in mapped:
                return
            if s.source is not None:
                place(s.source)
            mapped.add(id(s))
            lines.append("")
            lines.append(f"def {s.fn}({s.param}):")
            lines.extend("    " + ln for ln in s.lines)
            rets = ", ".join(v.var for v in s.exports)
            lines.append(f"    return {rets}" if s.exports else "    return None")
            lines.append("")
            outer = ", ".join(v.outer_var or "_" for v in s.exports)
            lines.append(f"{outer} = {s.var}.map({s.fn})" if s.exports else f"{s.var}.map({s.fn})")

        def place(item: TopItem) -> None:
            if id(item) in done_items:
                return
            done_items.add(id(item))
            for s in item.needs:
                map_stream(s)
            lines.append(item.line)

        for item in self.top:
            place(item)
        for s in self.streams:  # regions whose values nobody collects (end inside a region)
            map_stream(s)
        return lines


def plan(ir: FlowIR, taken: set[str]) -> Plan:
    """Wire every step of `ir`; raises WiringError for shapes that cannot be compiled."""
    b = _Builder(ir, taken)
    for step in ir.steps:
        b.place(step)
    return Plan(steps=b.wiring, helpers=b.helpers, body=b.body())
