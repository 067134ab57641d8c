"""How the ops of a flow are connected in the Dagster job: FlowIR -> wiring plan (data).

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
barrier.

A foreach whose body is a chain of plain steps also gets a *chunked* path: its op (a nested
foreach's `fanout_<step>` op) has a second dynamic output (`chunks`), used instead of the
first when the foreach is wider than the chunking threshold at run time; one `chunk_<step>`
op per body step is mapped over it and runs a chunk of that step's tasks, each with its own
attempts. The join (a nested join's `regroup_<step>` op) collects both paths: a top-level
foreach uses one (the other is an empty list); a nested fanout op may use both, its foreach
tasks on a branch not taken (markers) and unbounded ones staying one output per child.

Pure data in, pure data out: the plan is frozen records (calls, arguments, map regions)
that the template renders; nothing here writes Python source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from . import naming
from .ir import FlowIR, StepIR

UPSTREAMS = "upstreams"  # a foreach join's per-task input (op_specs names the op inputs)
UPSTREAM = "upstream"
CHUNKS = "chunks"  # a chunked foreach join's second input, and the foreach's second output

InputForm = Literal["none", "single", "list", "named", "lists", "chunked"]


class WiringError(Exception):
    """A shape that cannot be compiled; the message names the step."""


# -- the plan: frozen records the template renders ---------------------------------------------


@dataclass(frozen=True)
class Ref:
    """An op output handle (or a region's parameter), passed as is."""

    kind: ClassVar[str] = "ref"
    var: str


@dataclass(frozen=True)
class Collect:
    """`var.collect()`: every value of a mapped output, as one list."""

    kind: ClassVar[str] = "collect"
    var: str  # the top-level handle bound from `.map()`


@dataclass(frozen=True)
class RefList:
    """A fan-in list of handles: Dagster skips it only when every item is missing."""

    kind: ClassVar[str] = "list"
    items: tuple[Ref, ...]


Arg = Ref | Collect | RefList


@dataclass(frozen=True)
class Call:
    """`targets = op(args)`: one op invocation; a switch binds one target per output."""

    kind: ClassVar[str] = "call"
    targets: tuple[str, ...]
    op: str
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class MapRegion:
    """The ops mapped over one dynamic output: `def fn(param)` running `calls` and returning
    `returns`, then `bound = source.map(fn)` (one top-level handle per returned value)."""

    kind: ClassVar[str] = "map"
    fn: str
    param: str
    source: str  # top-level handle of the dynamic output
    calls: tuple[Call, ...]
    returns: tuple[str, ...]
    bound: tuple[str, ...]


Statement = Call | MapRegion


@dataclass(frozen=True)
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
    # joins) need every value to exist; so does a top-level one that decides whether a
    # top-level foreach runs (marking_switches: no op with a dynamic output is skipped)
    switch_always: bool = False
    chunked: bool = False  # top-level foreach with a chunked path (a second dynamic output)
    ubf_control: bool = False  # @parallel step: one control task that runs the workers
    parallel_join: bool = False  # join of a @parallel step: inputs are its mapper tasks


@dataclass(frozen=True)
class HelperOp:
    """A generated op that is not one Metaflow task: fanout_*, regroup_* or chunk_*."""

    kind: Literal["fanout", "regroup", "chunk"]
    name: str
    step: str  # the foreach step (fanout), the join/merge step (regroup), the body step (chunk)
    input_names: tuple[str, ...]
    depth: int  # regroup: key length of the output; fanout: key length of its input
    # fanout: a second dynamic output of chunks (its foreach's body may run in chunks);
    # regroup: the last input is the chunk ops' collected output
    chunked: bool = False


@dataclass(frozen=True)
class Plan:
    """The whole job: each step's op shape, the helper ops, the job body in order."""

    steps: Mapping[str, StepWiring]
    helpers: tuple[HelperOp, ...]
    body: tuple[Statement, ...]


# -- the builder (mutable while it walks the graph) --------------------------------------------


@dataclass(eq=False)
class _Stream:
    """A dynamic output and the region of ops mapped over it. Dagster never skips it: a
    switch deciding whether a top-level foreach runs marks its branch not taken instead
    (marking_switches), so every value collected from a stream exists."""

    var: str  # top-level variable holding the dynamic output handle
    depth: int  # length of its mapping keys (foreach nesting of its tasks)
    fn: str  # name of the region function passed to .map()
    param: str  # that function's parameter
    source: _TopItem | None = None
    calls: list[Call] = field(default_factory=list)
    exports: list[_Val] = field(default_factory=list)


@dataclass(eq=False)
class _Val:
    """An op output handle, in the scope of its stream (None: top level)."""

    var: str
    stream: _Stream | None
    outer_var: str | None = None  # name of the mapped output at top level, once exported
    optional: bool = False  # may be skipped by Dagster (after a top-level switch)


@dataclass(eq=False)
class _TopItem:
    """One statement of the job body with the streams it needs mapped first."""

    call: Call
    needs: list[_Stream] = field(default_factory=list)


@dataclass
class _Inputs:
    """Where a step's op reads its inputs: its input form, scope and call arguments."""

    form: InputForm
    stream: _Stream | None
    args: tuple[Arg, ...]
    needs: list[_Stream] = field(default_factory=list)
    names: tuple[str, ...] = ()
    parallel_join: bool = False
    optional_out: bool = False


class _Builder:
    """Walks the steps in topological order, placing each op call in its region."""

    def __init__(self, ir: FlowIR, taken: set[str]) -> None:
        self.ir = ir
        self.taken = set(taken)
        self.op_names = {s.op_name for s in ir.steps}
        self.wiring: dict[str, StepWiring] = {}
        self.helpers: list[HelperOp] = []
        self.top: list[_TopItem] = []
        self.streams: list[_Stream] = []
        self.value: dict[str, _Val] = {}  # step -> its main output
        self.switch_val: dict[tuple[str, str], _Val] = {}  # (switch step, target) -> output
        self.children: dict[str, _Stream] = {}  # foreach step -> stream of its children
        self.statement: dict[str, _TopItem] = {}  # top-level step -> its statement
        # chunked fan-out: body step -> its foreach; foreach -> its chunk stream; body step ->
        # its chunk op's output
        self.chunk_body = {b: f.name for f in ir.steps for b in chunkable_body(ir, f)}
        self.chunk_foreaches = set(self.chunk_body.values())
        self.chunk_stream: dict[str, _Stream] = {}
        self.chunk_val: dict[str, _Val] = {}
        self.marking = marking_switches(ir)

    # -- names ------------------------------------------------------------------------------
    def var(self, base: str) -> str:
        """A fresh variable of the job function (never shadowing a module name)."""
        return naming.python_identifier(base, self.taken)

    def helper_name(self, base: str) -> str:
        """A fresh op name for a fanout_*/regroup_* helper."""
        return naming.unique(naming.to_dagster_alphabet(base), self.op_names)

    # -- emission ---------------------------------------------------------------------------
    def emit(
        self, stream: _Stream | None, call: Call, needs: list[_Stream] | None = None
    ) -> _TopItem | None:
        """Add `call` to its region, or to the job body (returning its statement)."""
        if stream is None:
            item = _TopItem(call, needs or [])
            self.top.append(item)
            return item
        stream.calls.append(call)
        return None

    def export(self, val: _Val) -> Collect:
        """Make a region value available at top level: the region returns it, `.map()`
        binds it to a top-level handle, and the caller collects that."""
        assert val.stream is not None
        if val.outer_var is None:
            val.outer_var = self.var(f"{val.var}_each")
            val.stream.exports.append(val)
        return Collect(val.outer_var)

    def new_stream(self, name: str, depth: int, param: str) -> _Stream:
        s = _Stream(var=name, depth=depth, fn=self.var(f"each_{name}"), param=param)
        self.streams.append(s)
        return s

    # -- inputs -----------------------------------------------------------------------------
    def incoming(self, step: StepIR) -> list[_Val]:
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
                vals.append(_Val(stream.param, stream))
            elif pred.kind == "switch":
                vals.append(self.switch_val[(pred.name, step.name)])
            else:
                vals.append(self.value[pred.name])
        return vals

    def children_of(self, foreach: StepIR) -> _Stream:
        """The stream of a foreach step's children (fanning out again if it is nested)."""
        if foreach.name in self.children:
            return self.children[foreach.name]
        v = self.value[foreach.name]
        if v.stream is None:  # top-level foreach: its op is the dynamic output
            stream = self.new_stream(v.var, 1, self.var("item"))
            stream.source = self.statement[foreach.name]
        else:
            op = self.helper_name(f"fanout_{foreach.name}")
            chunked = foreach.name in self.chunk_foreaches
            depth = v.stream.depth
            self.helpers.append(
                HelperOp("fanout", op, foreach.name, (UPSTREAMS,), depth, chunked=chunked)
            )
            name = self.var(f"{foreach.name}_fanout")
            chunks = self.var(f"{foreach.name}_chunks") if chunked else None
            targets = (name,) if chunks is None else (name, chunks)
            stream = self.new_stream(name, depth + 1, self.var("item"))
            stream.source = self.emit(None, Call(targets, op, (self.export(v),)), [v.stream])
            if chunks is not None:
                self.add_chunk_stream(foreach, chunks, depth + 1, stream.source)
        self.children[foreach.name] = stream
        return stream

    def add_chunk_stream(
        self, foreach: StepIR, var: str, depth: int, source: _TopItem | None
    ) -> None:
        """The stream of a chunked foreach's chunks (its body's chunk ops are mapped over it)."""
        stream = self.new_stream(var, depth, self.var("chunk"))
        stream.source = source
        self.chunk_stream[foreach.name] = stream

    def regroup(
        self, step: StepIR, vals: list[_Val], depth: int, chunks: _Val | None = None
    ) -> _Val:
        """Collect `vals` (each in some region; `chunks`: a chunked body's chunk ops too) and
        re-emit them grouped per outer index."""
        op = self.helper_name(f"regroup_{step.name}")
        names = tuple(naming.python_identifier(f"from_{i}", set()) for i in range(len(vals)))
        inputs = vals if chunks is None else [*vals, chunks]
        if chunks is not None:
            names += (CHUNKS,)
        self.helpers.append(HelperOp("regroup", op, step.name, names, depth, chunks is not None))
        name = self.var(f"{step.name}_inputs")
        stream = self.new_stream(name, depth, self.var("items"))
        args = tuple(self.export(v) for v in inputs)
        needs = [v.stream for v in inputs if v.stream is not None]
        stream.source = self.emit(None, Call((name,), op, args), needs)
        return _Val(stream.param, stream)

    def foreach_join(self, step: StepIR, vals: list[_Val]) -> _Inputs:
        """A foreach join: one collected list (a list per branch of a switch ending the
        body); deeper than one level, through a regroup op."""
        depths = {v.stream.depth if v.stream is not None else 0 for v in vals}
        if len(depths) != 1 or 0 in depths:
            raise WiringError(f"step {step.name!r}: joins branches from different foreach levels")
        (depth,) = depths
        chunks = self.chunk_val.get(step.in_steps[0]) if len(step.in_steps) == 1 else None
        if depth > 1:
            grouped = self.regroup(step, vals, depth - 1, chunks)
            return _Inputs("list", grouped.stream, (Ref(grouped.var),))
        needs = [v.stream for v in vals if v.stream is not None]
        if chunks is not None:
            assert chunks.stream is not None
            args = (self.export(vals[0]), self.export(chunks))
            return _Inputs("chunked", None, args, [*needs, chunks.stream], (UPSTREAMS, CHUNKS))
        if len(vals) == 1:
            return _Inputs("list", None, (self.export(vals[0]),), needs)
        # switch branches ending the body: one collected list per branch
        names = tuple(
            naming.python_identifier(f"from_{p}", {"context", "config"}) for p in step.in_steps
        )
        return _Inputs("lists", None, tuple(self.export(v) for v in vals), needs, names)

    def merge(self, step: StepIR, vals: list[_Val]) -> _Inputs:
        """A step with several inputs that is not a foreach join."""
        streams = {id(v.stream) for v in vals}
        if all(v.stream is None for v in vals) and (
            step.kind != "join" or any(v.optional for v in vals)
        ):
            # a conditional merge, or a join fed by switch branches: Dagster runs a
            # fan-in list unless every item is missing (then it is skipped too)
            refs = RefList(tuple(Ref(v.var) for v in vals))
            return _Inputs("list", None, (refs,), optional_out=all(v.optional for v in vals))
        if len(streams) == 1:
            names = tuple(naming.python_identifier(p, {"context", "config"}) for p in step.in_steps)
            return _Inputs("named", vals[0].stream, tuple(Ref(v.var) for v in vals), names=names)
        if any(v.stream is None for v in vals) or step.foreach_depth == 0:
            raise WiringError(f"step {step.name!r}: joins branches from different foreach levels")
        grouped = self.regroup(step, vals, step.foreach_depth)
        return _Inputs("list", grouped.stream, (Ref(grouped.var),))

    def inputs(self, step: StepIR) -> _Inputs:
        """Where `step` runs and what its call passes, from its predecessors' values."""
        vals = self.incoming(step)
        if step.name == self.ir.start_step:
            return _Inputs("none", None, ())
        if step.kind == "join" and any(self.ir.step(p).is_parallel for p in step.in_steps):
            (control,) = vals
            return _Inputs(
                "single", control.stream, (Ref(control.var),), parallel_join=True,
                optional_out=control.optional,
            )
        if step.kind == "join" and step.join_kind == "foreach":
            return self.foreach_join(step, vals)
        if len(vals) > 1:
            return self.merge(step, vals)
        (v,) = vals
        return _Inputs("single", v.stream, (Ref(v.var),), optional_out=v.optional)

    # -- steps ------------------------------------------------------------------------------
    def place(self, step: StepIR) -> None:
        """Emit the call of `step`'s op and record how its op is shaped."""
        i = self.inputs(step)
        var = self.var(step.name)
        switch_outputs: tuple[tuple[str, str], ...] = ()
        always = False
        if step.kind == "switch":
            targets = tuple(t for t in dict.fromkeys(step.next_steps) if t != step.name)
            switch_outputs = tuple(
                (t, naming.python_identifier(f"to_{t}", {"result"})) for t in targets
            )
            # (a loop too) inside a region, or deciding whether a top-level foreach runs
            always = i.stream is not None or step.name in self.marking
            out_vars = tuple(self.var(f"{step.name}_to_{t}") for t, _ in switch_outputs)
            for t, ov in zip(targets, out_vars, strict=True):
                # a top-level switch's (or loop's) unchosen outputs are skipped, unless it marks
                optional = i.optional_out or (not always and len(targets) > 1)
                self.switch_val[(step.name, t)] = _Val(ov, i.stream, optional=optional)
            call = Call(out_vars, step.op_name, i.args)  # one output: the handle, not a tuple
        else:
            call = Call((var,), step.op_name, i.args)
        # a top-level foreach's op fans out itself (a nested one's fanout_* op, children_of)
        chunked = step.name in self.chunk_foreaches and i.stream is None
        if chunked:
            call = Call((var, self.var(f"{step.name}_chunks")), step.op_name, i.args)
        statement = self.emit(i.stream, call, i.needs)
        if statement is not None:
            self.statement[step.name] = statement
        if chunked:
            self.add_chunk_stream(step, call.targets[1], 1, statement)
        if step.name in self.chunk_body:
            self.place_chunk(step)
        self.value[step.name] = _Val(var, i.stream, optional=i.optional_out)
        self.wiring[step.name] = StepWiring(
            input_form=i.form,
            input_names=i.names,
            in_map=i.stream is not None,
            dynamic_out=step.kind == "foreach" and i.stream is None and not step.parallel_foreach,
            chunked=chunked,
            switch_outputs=switch_outputs,
            switch_always=always,
            ubf_control=step.is_parallel,
            parallel_join=i.parallel_join,
        )

    def place_chunk(self, step: StepIR) -> None:
        """The chunk op of a body step of a chunked foreach, in the foreach's chunk stream."""
        stream = self.chunk_stream[self.chunk_body[step.name]]
        (pred,) = step.in_steps
        upstream = self.chunk_val[pred].var if pred in self.chunk_val else stream.param
        op = self.helper_name(f"chunk_{step.name}")
        self.helpers.append(HelperOp("chunk", op, step.name, (UPSTREAM,), stream.depth))
        var = self.var(f"{step.name}_chunk")
        self.emit(stream, Call((var,), op, (Ref(upstream),)))
        self.chunk_val[step.name] = _Val(var, stream)

    # -- final ordering ---------------------------------------------------------------------
    def body(self) -> tuple[Statement, ...]:
        """Top-level statements, each region placed (and mapped) before its first use."""
        out: list[Statement] = []
        done_items: set[int] = set()
        mapped: set[int] = set()

        def map_stream(s: _Stream) -> None:
            if id(s) in mapped:
                return
            if s.source is not None:
                place(s.source)
            mapped.add(id(s))
            bound = tuple(v.outer_var for v in s.exports if v.outer_var is not None)
            returns = tuple(v.var for v in s.exports)
            out.append(MapRegion(s.fn, s.param, s.var, tuple(s.calls), returns, bound))

        def place(item: _TopItem) -> None:
            if id(item) in done_items:
                return
            done_items.add(id(item))
            for s in item.needs:
                map_stream(s)
            out.append(item.call)

        for item in self.top:
            place(item)
        for s in self.streams:  # regions whose values nobody collects (end inside a region)
            map_stream(s)
        return tuple(out)


def marking_switches(ir: FlowIR) -> frozenset[str]:
    """Top-level switches (loops too) that decide whether a top-level foreach runs: they mark
    the branches not taken (a not-taken marker on every output, as inside a region) instead
    of leaving them to Dagster's skip, and such a foreach fans out one marker child. Dagster
    cannot re-execute "From failure" a run in which an op with a dynamic output was skipped
    and two or more mapped ops follow it (README, Resume and re-execution); with these marks
    no op with a dynamic output is ever skipped."""
    fanning = {
        s.name
        for s in ir.steps
        if s.kind == "foreach" and s.foreach_depth == 0 and not s.parallel_foreach
    }
    # step -> the fanning foreaches it leads to (steps in topological order: successors first)
    below: dict[str, frozenset[str]] = {}
    for step in reversed(ir.steps):
        later = [below[n] for n in step.next_steps if n != step.name]
        below[step.name] = frozenset({step.name} & fanning).union(*later)
    marking = set()
    for step in ir.steps:
        if step.kind != "switch" or step.foreach_depth:
            continue
        reached = [below[t] for t in dict.fromkeys(step.next_steps) if t != step.name]
        if reached and frozenset.union(*reached) != frozenset.intersection(*reached):
            marking.add(step.name)
    return frozenset(marking)


def chunkable_body(ir: FlowIR, foreach: StepIR) -> tuple[str, ...]:
    """The body of a foreach that may run in chunks: a chain of plain steps from the foreach
    to its join (no branch, switch, nested foreach or @parallel); () otherwise."""
    if foreach.kind != "foreach" or foreach.parallel_foreach:
        return ()
    chain: list[str] = []
    step = foreach
    while True:
        if len(step.next_steps) != 1:
            return ()
        nxt = ir.step(step.next_steps[0])
        if nxt.kind == "join" and nxt.join_kind == "foreach":
            return tuple(chain) if chain and nxt.in_steps == (chain[-1],) else ()
        if nxt.kind != "linear" or nxt.is_parallel or len(nxt.in_steps) != 1:
            return ()
        chain.append(nxt.name)
        step = nxt


def plan(ir: FlowIR, taken: set[str]) -> Plan:
    """Wire every step of `ir`; raises WiringError for shapes that cannot be compiled."""
    b = _Builder(ir, taken)
    for step in ir.steps:
        b.place(step)
    return Plan(steps=b.wiring, helpers=tuple(b.helpers), body=b.body())
