"""Every finished task's self.next() is checked against the graph, as Metaflow's runtime does;
a loop inside a foreach passes not-taken markers on its other exits."""

from __future__ import annotations

from typing import Any

import pytest
from dagster import Failure

from dagster_metaflow.runtime.flow import MetaflowFlow
from dagster_metaflow.runtime.ids import not_taken
from dagster_metaflow.runtime.taskstore import TaskStore
from dagster_metaflow.runtime.transitions import transition_error

GRAPH = {"start": ("middle",), "middle": ("end",), "spin": ("spin", "odd", "even"), "end": ()}


def _flow(monkeypatch: pytest.MonkeyPatch, transitions: dict[str, Any]) -> MetaflowFlow:
    """A flow whose task datastores hold only `_transition`, per pathspec."""
    flow = MetaflowFlow(name="F", file="f.py", transitions=GRAPH, switch_steps=("spin",))
    monkeypatch.setattr(TaskStore, "task_datastore", lambda self, p, **kw: {"_transition": transitions.get(p)})
    return flow


def test_messages_are_metaflows() -> None:
    assert transition_error("middle", [], ("end",), switch=False) == (
        "Based on static analysis of the code, step middle was expected to transition to step(s) end. "
        "However, when the code was executed, self.next() was called with . Make sure there is only "
        "one unconditional self.next() call in the end of your step."
    )
    assert transition_error("spin", [], ("spin", "odd"), switch=True) == (
        "Switch step spin should transition to exactly one step at runtime, but got: "
    )
    assert transition_error("spin", ["x"], ("spin", "odd"), switch=True) == (
        "Switch step spin transitioned to unexpected step x. Expected one of: spin, odd"
    )
    assert transition_error("middle", ["end"], ("end",), switch=False) is None
    assert transition_error("end", [], (), switch=False) is None
    assert transition_error("middle", [], None, switch=False) is None  # a file without the graph


def test_a_task_without_self_next_fails_the_step_and_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = _flow(monkeypatch, {"R/middle/m": None, "R/start/s": (["middle"], None)})
    assert flow.check_transition("start", "R/start/s") == ["middle"]
    with pytest.raises(Failure) as exc:
        flow.check_transition("middle", "R/middle/m")
    assert exc.value.description.startswith("Internal error: Based on static analysis of the code, step middle")
    assert exc.value.allow_retries is False


def test_a_switch_must_choose_one_of_its_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = _flow(monkeypatch, {"R/spin/a": (["odd"], None), "R/spin/b": None, "R/spin/c": (["nowhere"], None)})
    assert flow.chosen_step("R/spin/a") == "odd"
    for bad, text in [("R/spin/b", "exactly one step"), ("R/spin/c", "unexpected step nowhere")]:
        with pytest.raises(Failure, match=text):
            flow.chosen_step(bad)


class _Context:
    """The little of an OpExecutionContext that run_loop uses."""

    class log:  # noqa: N801
        @staticmethod
        def info(msg: str) -> None:
            pass


def test_a_loop_inside_a_foreach_marks_the_exits_it_did_not_take(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = _flow(monkeypatch, {"R/spin/spin-0": (["spin"], None), "R/spin/spin-0-r1": (["even"], None)})
    monkeypatch.setattr(TaskStore, "attempts_made", lambda self, p: 0)
    monkeypatch.setattr(TaskStore, "succeeded", lambda self, p: True)
    outputs = {"odd": "to_odd", "even": "to_even"}
    args = (_Context(), "spin", "R", "R/body/body-0", "spin-0")
    got = {o.output_name: o.value for o in flow.run_loop(*args, outputs=outputs, always=True)}  # type: ignore[arg-type]
    assert got == {"to_even": "R/spin/spin-0-r1", "to_odd": not_taken("R/spin/spin-0-r1")}
    # at top level (a loop deciding no foreach) only the exit taken is yielded (Dagster skips the others)
    got = {o.output_name: o.value for o in flow.run_loop(*args, outputs=outputs)}  # type: ignore[arg-type]
    assert got == {"to_even": "R/spin/spin-0-r1"}


def test_a_foreach_on_a_branch_not_taken_fans_out_one_marker_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """A top-level switch deciding whether a foreach runs marks the branch not taken
    (wiring.marking_switches): the foreach op fans out one marker child, nothing in chunks,
    and reads no datastore (a marker has none)."""
    flow = _flow(monkeypatch, {})
    monkeypatch.setattr(TaskStore, "task_datastore", lambda self, p, **kw: pytest.fail(f"read {p}"))
    marker = not_taken("R/fe/fe")
    for chunks in (None, "chunks"):
        got = [(o.output_name, o.mapping_key, o.value) for o in flow.fan_out(_Context(), marker, chunks)]  # type: ignore[arg-type]
        assert got == [("result", "0", marker)]

