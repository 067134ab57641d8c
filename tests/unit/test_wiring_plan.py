"""The wiring plan is data: calls, arguments and map regions, checked without rendering."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import load_flow_class

from dagster_metaflow import naming
from dagster_metaflow.codegen import reserved_names
from dagster_metaflow.ir import FlowIR, IROptions, StepIR, StepKind, build_flow_ir
from dagster_metaflow.wiring import (
    Call,
    Collect,
    HelperOp,
    MapRegion,
    Plan,
    Ref,
    RefList,
    StepWiring,
    WiringError,
    chunkable_body,
    marking_switches,
    plan,
)


def _ir(filename: str) -> FlowIR:
    from metaflow.graph import FlowGraph

    cls = load_flow_class(filename, "wiring")
    return build_flow_ir(cls, FlowGraph(cls), IROptions(job_name="J", flow_file=filename))


def _plan(filename: str) -> Plan:
    return plan(_ir(filename), set(reserved_names()))


def _call(target: str | tuple[str, ...], op: str, *args: Any) -> Call:
    return Call(target if isinstance(target, tuple) else (target,), op, args)


def test_linear_flow_is_a_chain_of_top_level_calls() -> None:
    p = _plan("linear_flow.py")
    assert p.body == (
        _call("start", "op_start"),
        _call("a", "op_a", Ref("start")),
        _call("b", "op_b", Ref("a")),
        _call("end", "op_end", Ref("b")),
    )
    assert p.steps["start"] == StepWiring(input_form="none")
    assert p.steps["a"] == StepWiring(input_form="single")
    assert p.helpers == ()


def test_top_level_foreach_maps_a_region_and_collects_it() -> None:
    p = _plan("hello_flow.py")
    region = MapRegion(
        fn="each_start",
        param="item",
        source="start",
        calls=(_call("square", "op_square", Ref("item")),),
        returns=("square",),
        bound=("square_each",),
    )
    # its chain of body steps also runs in chunks, over the foreach's second output
    chunks = MapRegion(
        fn="each_start_chunks",
        param="chunk",
        source="start_chunks",
        calls=(_call("square_chunk", "chunk_square", Ref("chunk")),),
        returns=("square_chunk",),
        bound=("square_chunk_each",),
    )
    assert p.body[:4] == (
        _call(("start", "start_chunks"), "op_start"),
        region,
        chunks,
        _call("join", "op_join", Collect("square_each"), Collect("square_chunk_each")),
    )
    assert p.helpers == (HelperOp("chunk", "chunk_square", "square", ("upstream",), 1),)
    assert p.steps["start"].chunked and p.steps["join"].input_form == "chunked"
    # a static join of top-level branches: one named input per branch
    assert _call("merge", "op_merge", Ref("left"), Ref("right")) in p.body
    assert p.steps["merge"].input_form == "named"
    assert p.steps["merge"].input_names == ("left", "right")
    assert p.steps["start"].dynamic_out and p.steps["square"].in_map
    assert p.steps["join"].input_names == ("upstreams", "chunks")


@pytest.mark.parametrize(
    ("flow", "chunked"),
    [
        ("hello_flow.py", {"start": ("square",)}),
        ("shapes/multistep_body_flow.py", {"start": ("body", "transform", "polish")}),
        ("shapes/foreach_in_branch_flow.py", {"fanning": ("each",)}),
        # the inner foreach's body is a chain (its fanout op chunks it); the outer one's body
        # holds a foreach: one op per task
        ("shapes/nested2_flow.py", {"fan_inner": ("work",)}),
        ("shapes/nested_switch_flow.py", {}),  # a switch in the body
        ("shapes/parallel_flow.py", {}),  # @parallel: one control task
    ],
)
def test_only_foreaches_whose_body_is_a_chain_of_plain_steps_run_in_chunks(
    flow: str, chunked: dict[str, tuple[str, ...]]
) -> None:
    ir = _ir(flow)
    found = {s.name: chunkable_body(ir, s) for s in ir.steps if chunkable_body(ir, s)}
    assert found == chunked
    p = plan(ir, set(reserved_names()))
    assert {h.step for h in p.helpers if h.kind == "chunk"} == {
        b for body in chunked.values() for b in body
    }


def test_nested_foreach_fans_out_again_and_regroups_before_the_inner_join() -> None:
    p = _plan("shapes/nested2_flow.py")
    assert p.helpers == (
        HelperOp("fanout", "fanout_fan_inner", "fan_inner", ("upstreams",), 1, chunked=True),
        HelperOp("chunk", "chunk_work", "work", ("upstream",), 2),
        HelperOp("regroup", "regroup_inner_join", "inner_join", ("from_0", "chunks"), 1, True),
    )
    kinds = [type(s).__name__ for s in p.body]
    assert kinds == [
        "Call", "MapRegion", "Call", "MapRegion", "MapRegion", "Call", "MapRegion", "Call", "Call"
    ]
    fanout = _call(("fan_inner_fanout", "fan_inner_chunks"), "fanout_fan_inner", Collect("fan_inner_each"))
    assert p.body[2] == fanout
    inner, chunks = p.body[3], p.body[4]
    assert isinstance(inner, MapRegion) and isinstance(chunks, MapRegion)
    assert (inner.source, inner.param, inner.bound) == ("fan_inner_fanout", "item_2", ("work_each",))
    # the inner foreach's second output: its body's chunk op mapped over the chunks
    assert (chunks.source, chunks.param, chunks.bound) == ("fan_inner_chunks", "chunk", ("work_chunk_each",))
    assert chunks.calls == (_call("work_chunk", "chunk_work", Ref("chunk")),)
    # the inner join's regroup collects both paths (the one not taken is an empty list)
    regroup = _call("inner_join_inputs", "regroup_inner_join", Collect("work_each"), Collect("work_chunk_each"))
    assert p.body[5] == regroup
    grouped = p.body[6]
    assert isinstance(grouped, MapRegion)
    assert grouped.calls == (_call("inner_join", "op_inner_join", Ref("items")),)
    assert p.body[7] == _call("outer_join", "op_outer_join", Collect("inner_join_each"))


def test_a_nested_foreach_whose_body_is_not_a_chain_fans_out_in_tasks_only() -> None:
    p = _plan("shapes/nested_switch_flow.py")
    fanouts = [h for h in p.helpers if h.kind == "fanout"]
    assert fanouts and not any(h.chunked for h in p.helpers)
    assert not any(h.kind == "chunk" for h in p.helpers)


def test_top_level_switch_binds_one_optional_output_per_branch_and_merges_a_fan_in_list() -> None:
    p = _plan("shapes/switch_flow.py")
    assert p.body[0] == _call(("start_to_long_a", "start_to_short"), "op_start")
    assert p.steps["start"].switch_outputs == (("long_a", "to_long_a"), ("short", "to_short"))
    assert not p.steps["start"].switch_always  # the branch not taken is skipped
    merge = _call("merge", "op_merge", RefList((Ref("long_b"), Ref("short"))))
    assert merge in p.body and p.steps["merge"].input_form == "list"


@pytest.mark.parametrize(
    ("filename", "ends"),
    [
        ("open_switch_merges_flow.py", ("m1", "m2")),
        ("open_switch_parallel_flow.py", ("gather_a", "gather_b")),
    ],
    ids=["merges", "parallel-joins"],
)
def test_a_split_join_fed_by_an_open_switch_runs_whichever_branch_is_skipped(
    filename: str, ends: tuple[str, str]
) -> None:
    """An open switch into a split's join whose two branches each end in a merge or a
    @parallel join (foreach joins: the test below): Dagster skips that end with its branch,
    so the split's join is a fan-in list, run on what was taken. Before, those ends were
    taken as always present, the join had named inputs, and Dagster skipped it and the end
    (MetaflowRunIncomplete)."""
    p = _plan(filename)
    (join,) = [c for c in p.body if isinstance(c, Call) and c.targets == ("join",)]
    (refs,) = join.args
    assert isinstance(refs, RefList) and {r.var for r in refs.items} == {*ends, "other"}
    assert p.steps["join"].input_form == "list"


@pytest.mark.parametrize(
    ("filename", "ends"),
    [
        ("open_switch_foreaches_flow.py", ("fjoin", "fjoin2")),
        ("open_switch_nested_flow.py", ("outer_join_a", "outer_join_b")),
    ],
    ids=["foreach-joins", "nested-foreach-joins"],
)
def test_a_switch_deciding_whether_a_top_level_foreach_runs_marks_the_branch_not_taken(
    filename: str, ends: tuple[str, str]
) -> None:
    """The same open switch, its branches holding top-level foreaches: it yields a not-taken
    marker on the branch not taken instead of leaving it to Dagster's skip (a skipped op with
    a dynamic output followed by two mapped ops breaks Dagster's re-execution from failure),
    so every value reaching the split's join exists and the join takes them by name."""
    p = _plan(filename)
    assert p.steps["osw"].switch_always and not p.steps["osw"].in_map
    assert marking_switches(_ir(filename)) == {"osw"}
    (join,) = [c for c in p.body if isinstance(c, Call) and c.targets == ("join",)]
    assert {r.var for r in join.args if isinstance(r, Ref)} == {*ends, "other"}
    assert p.steps["join"].input_form == "named"


@pytest.mark.parametrize(
    ("filename", "marking"),
    [
        ("marking_flow.py", {"start", "lp"}),
        ("shapes/switch_flow.py", set()),  # no foreach
        ("shapes/switch_in_foreach_flow.py", set()),  # inside a region: always marks anyway
        ("shapes/recursive_flow.py", set()),  # a loop with one exit
        ("shapes/parallel_flow.py", set()),
    ],
)
def test_only_switches_deciding_whether_a_top_level_foreach_runs_mark_their_branches(
    filename: str, marking: set[str]
) -> None:
    """marking_flow.py: a switch with a foreach on one branch only and a loop with a foreach
    on one exit mark; a switch inside a marking switch's branch whose branches reach the same
    foreaches, and a switch with a foreach only after its merge, leave it to Dagster."""
    assert marking_switches(_ir(filename)) == marking
    p = _plan(filename)
    top_switches = {n for n, w in p.steps.items() if w.switch_outputs and not w.in_map}
    assert {n for n in top_switches if p.steps[n].switch_always} == marking


def test_switch_inside_a_foreach_yields_every_output_and_merges_by_name() -> None:
    p = _plan("shapes/switch_in_foreach_flow.py")
    region = p.body[1]
    assert isinstance(region, MapRegion)
    assert region.calls == (
        _call(("classify_to_halve", "classify_to_triple"), "op_classify", Ref("item")),
        _call("halve", "op_halve", Ref("classify_to_halve")),
        _call("triple", "op_triple", Ref("classify_to_triple")),
        _call("settle", "op_settle", Ref("halve"), Ref("triple")),
    )
    assert p.steps["classify"].switch_always and p.steps["classify"].in_map
    assert p.steps["settle"].input_form == "named"


def test_switch_branches_ending_a_foreach_body_are_collected_one_list_each() -> None:
    p = _plan("shapes/switch_into_foreach_join_flow.py")
    region = p.body[1]
    assert isinstance(region, MapRegion) and region.bound == ("even_each", "odd_each")
    assert p.body[2] == _call("join", "op_join", Collect("even_each"), Collect("odd_each"))
    assert p.steps["join"].input_form == "lists"
    assert p.steps["join"].input_names == ("from_even", "from_odd")


def test_join_across_foreach_levels_goes_through_a_regroup_of_every_input() -> None:
    p = _plan("shapes/foreach_in_split_in_foreach_flow.py")
    regather = _call(
        "regather_inputs", "regroup_regather", Collect("parts_done_each"), Collect("plain_each")
    )
    assert regather in p.body
    assert HelperOp("regroup", "regroup_regather", "regather", ("from_0", "from_1"), 1) in p.helpers
    # the region of `start` is mapped before the statement that collects its values
    order = [s.fn if isinstance(s, MapRegion) else s.targets[0] for s in p.body]
    assert order.index("each_start") < order.index("regather_inputs")
    region = p.body[order.index("each_regather_inputs")]
    assert isinstance(region, MapRegion) and region.param == "items_2"
    assert p.steps["regather"] == StepWiring(input_form="list", in_map=True)


def test_parallel_step_is_one_control_op_and_its_join_reads_the_mapper_tasks() -> None:
    p = _plan("shapes/parallel_flow.py")
    assert p.body == (
        _call("start", "op_start"),
        _call("train", "op_train", Ref("start")),
        _call("gather", "op_gather", Ref("train")),
        _call("end", "op_end", Ref("gather")),
    )
    assert p.steps["train"].ubf_control and not p.steps["train"].dynamic_out
    assert p.steps["gather"].parallel_join


Row = tuple[str, StepKind, tuple[str, ...], tuple[str, ...], int]  # name, kind, next, in, depth


def _hand_built(rows: list[Row]) -> FlowIR:
    """A FlowIR from rows, for shapes no test flow has."""
    ops = naming.op_names(r[0] for r in rows)
    return FlowIR(
        flow_name="F",
        job_name="F",
        flow_file="f.py",
        start_step="start",
        end_step="end",
        steps=tuple(
            StepIR(
                name=n,
                op_name=ops[n],
                kind=k,
                next_steps=nx,
                in_steps=i,
                foreach_depth=d,
                split_parents=(),
                join_kind="static" if k == "join" else None,
            )
            for n, k, nx, i, d in rows
        ),
    )


def test_variables_never_take_reserved_names() -> None:
    ir = _hand_built(
        [
            ("start", "start", ("FLOW",), (), 0),
            ("FLOW", "linear", ("TAGS",), ("start",), 0),
            ("TAGS", "linear", ("context",), ("FLOW",), 0),
            ("context", "linear", ("end",), ("TAGS",), 0),
            ("end", "end", (), ("context",), 0),
        ]
    )
    body = plan(ir, set(reserved_names())).body
    assert [c.targets for c in body if isinstance(c, Call)] == [
        ("start",),
        ("FLOW_2",),
        ("TAGS_2",),
        ("context_2",),
        ("end",),
    ]


def test_a_join_of_branches_from_different_foreach_levels_is_refused() -> None:
    ir = _hand_built(
        [
            ("start", "split", ("x", "f"), (), 0),
            ("x", "linear", ("j",), ("start",), 0),
            ("f", "foreach", ("c",), ("start",), 0),
            ("c", "linear", ("j",), ("f",), 1),
            ("j", "join", ("end",), ("c", "x"), 0),
            ("end", "end", (), ("j",), 0),
        ]
    )
    with pytest.raises(WiringError, match="step 'j': joins branches from different foreach levels"):
        plan(ir, set())
