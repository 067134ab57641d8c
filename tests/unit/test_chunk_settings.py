"""The chunked fan-out's pure parts: when a foreach chunks, how chunks are keyed and read
back (progress, resume, re-execution), and what a chunk carries."""

from __future__ import annotations

import pytest
from dagster import Failure

from dagster_metaflow import naming
from dagster_metaflow.runs import step_of, tasks_of
from dagster_metaflow.runtime.chunks import chunk_outputs, chunk_size, chunk_tasks, index_path
from dagster_metaflow.runtime.resume import tasks_of_step_keys


def test_a_foreach_chunks_only_above_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_METAFLOW_CHUNK_ABOVE", raising=False)
    monkeypatch.delenv("DAGSTER_METAFLOW_CHUNK_SIZE", raising=False)
    assert chunk_size(500) is None and chunk_size(501) == 20  # the defaults
    monkeypatch.setenv("DAGSTER_METAFLOW_CHUNK_ABOVE", "0")
    monkeypatch.setenv("DAGSTER_METAFLOW_CHUNK_SIZE", "3")
    assert chunk_size(1) == 3
    monkeypatch.setenv("DAGSTER_METAFLOW_CHUNK_ABOVE", "off")
    assert chunk_size(10**6) is None


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DAGSTER_METAFLOW_CHUNK_ABOVE", "many"),
        ("DAGSTER_METAFLOW_CHUNK_ABOVE", "-1"),
        ("DAGSTER_METAFLOW_CHUNK_SIZE", "0"),
        ("DAGSTER_METAFLOW_CHUNK_SIZE", "off"),
    ],
)
def test_an_invalid_setting_fails_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv("DAGSTER_METAFLOW_CHUNK_ABOVE", "0")
    monkeypatch.setenv(var, value)
    with pytest.raises(Failure) as exc:
        chunk_size(10)
    assert exc.value.description is not None
    assert exc.value.description.startswith(f"{var}={value!r} is not valid")
    assert "\n" not in exc.value.description


def test_chunks_cover_every_index_once_keyed_by_their_range() -> None:
    outs = list(chunk_outputs("r/start/start", 7, 3, "chunks", metadata={"m": 1}))
    assert [o.mapping_key for o in outs] == ["tasks_0_to_2", "tasks_3_to_5", "tasks_6_to_6"]
    assert [o.output_name for o in outs] == ["chunks"] * 3
    assert [i for o in outs for i, _parent in o.value] == list(range(7))
    assert {p for o in outs for _i, p in o.value} == {"r/start/start"}
    assert [bool(o.metadata) for o in outs] == [True, False, False]  # the task's, once
    assert [naming.chunk_range(o.mapping_key) for o in outs] == [range(0, 3), range(3, 6), range(6, 7)]
    assert naming.chunk_range("3_1") is None and naming.chunk_range(None) is None


def test_a_join_reads_the_tasks_of_every_chunk_and_progress_counts_them() -> None:
    chunks = [[[0, "r/b/b-0"], [1, "r/b/b-1"]], [[2, "r/b/b-2"]]]
    assert chunk_tasks(chunks) == ["r/b/b-0", "r/b/b-1", "r/b/b-2"]
    assert tasks_of("Flow_steps.chunk_body[tasks_20_to_39]") == 20
    assert tasks_of("Flow_steps.op_body[3]") == 1
    assert step_of("Flow_steps.chunk_body[tasks_20_to_39]") == "body"
    assert step_of("op_chunk_x[2]") == "chunk_x"  # a step named chunk_x


def test_a_nested_foreachs_chunks_hold_one_parents_children_keyed_by_it() -> None:
    outs = list(chunk_outputs("r/row/row-3-1", 5, 2, "chunks", parent=(3, 1)))
    assert [o.mapping_key for o in outs] == ["tasks_0_to_1_in_3_1", "tasks_2_to_3_in_3_1", "tasks_4_to_4_in_3_1"]
    assert [i for o in outs for i, _p in o.value] == [[3, 1, i] for i in range(5)]  # index paths
    assert naming.chunk_tasks("tasks_2_to_3_in_3_1") == ((3, 1), range(2, 4))
    assert naming.chunk_tasks("tasks_0_to_2") == ((), range(0, 3))
    assert naming.chunk_range("tasks_2_to_3_in_3_1") == range(2, 4)
    assert tasks_of("F_steps.chunk_cell[tasks_2_to_3_in_3_1]") == 2
    assert index_path(4) == (4,) and index_path([3, 1, 4]) == (3, 1, 4)


# op -> its Metaflow step (a regroup op runs no step)
STEPS_OF = {
    "op_body": "body",
    "chunk_body": "body",
    "op_post": "post",
    "chunk_post": "post",
    "op_start": "start",
    "op_join": "join",
    "regroup_join": None,
}


@pytest.mark.parametrize(
    ("keys", "whole", "single"),
    [
        # chunked parent, a chunk of the first body step failed: Dagster also lists the
        # unused per-task family of the second step, unresolved: it runs nothing
        (["G.chunk_body[tasks_2_to_3]", "G.chunk_post[tasks_2_to_3]", "G.op_post[?]", "G.op_join"],
         {"join"}, {("body", (2,)), ("body", (3,)), ("post", (2,)), ("post", (3,))}),
        # the per-task parent: the same for the unused chunk family
        (["op_body[4]", "op_post[4]", "chunk_post[?]", "op_join"], {"join"}, {("body", (4,)), ("post", (4,))}),
        # the failure after the body (the join): the unused family alone, every body task cloned
        (["chunk_post[?]", "op_join"], {"join"}, set()),
        (["op_post[?]", "op_join"], {"join"}, set()),
        # the foreach itself runs again: both families unresolved, every task of the body
        (["op_start", "op_body[?]", "chunk_body[?]", "op_post[?]", "chunk_post[?]", "op_join"],
         {"start", "body", "post", "join"}, set()),
        # a nested chunk: its tasks' whole index paths
        (["chunk_body[tasks_0_to_1_in_2]"], set(), {("body", (2, 0)), ("body", (2, 1))}),
    ],
)
def test_reexecuted_step_keys_name_the_tasks_that_run_again(
    keys: list[str], whole: set[str], single: set[tuple[str, tuple[int, ...]]]
) -> None:
    steps_of = {op: step for op, step in STEPS_OF.items() if step is not None}
    assert tasks_of_step_keys(keys, steps_of) == (whole, single)
