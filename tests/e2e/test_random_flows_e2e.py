"""A small sample of random flows (tests/shapegen.py) run natively and under Dagster."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import _ROOT, Workspace, artifacts_by_task, chunked_env, latest_run_pathspec

from dagster_metaflow.runtime import metaflow_run_id

sys.path.insert(0, str(Path(__file__).parent.parent))
from shapegen import generate, random_flow  # noqa: E402

pytestmark = pytest.mark.e2e


def _rich_seeds(count: int) -> list[int]:
    """First seeds whose flows combine foreach, switch and split (deterministic), then the
    first seeds with a switch going straight into a foreach join (no merge step)."""
    seeds: list[int] = []
    open_into_foreach: list[int] = []
    seed = 0
    while len(seeds) < count or len(open_into_foreach) < 2:
        _cls, src = random_flow(seed)
        if len(seeds) < count and "foreach=" in src and "condition=" in src and "def split" in src:
            seeds.append(seed)
        elif len(open_into_foreach) < 2 and "def osw" in src and "foreach=" in src and seed not in seeds:
            open_into_foreach.append(seed)
        seed += 1
    return seeds + open_into_foreach + [29]  # 29: a foreach on a branch not taken


def _first_seeds(wanted: dict[str, Callable[[int], bool]]) -> list[int]:
    """The first seed matching each predicate (deterministic), in the order given."""
    found: dict[str, int] = {}
    seed = 0
    while len(found) < len(wanted):
        for name, matches in wanted.items():
            if name not in found and seed not in found.values() and matches(seed):
                found[name] = seed
        seed += 1
    return [found[name] for name in wanted]


def _has(feature: str) -> Callable[[int], bool]:
    return lambda seed: feature in generate(seed, loops=True).features


def _replaced(prefix: str, level: int) -> Callable[[int], bool]:
    def matches(seed: int) -> bool:
        flow = generate(seed, loops=True, replace_body=True)
        return flow.replaced is not None and flow.replaced.rstrip("0123456789") == prefix and flow.replaced_level == level

    return matches


# loops inside nested foreach bodies whose exits rejoin in a merge step / in the joins
LOOP_SEEDS = _first_seeds({"closed": _has("loop_in_foreach2"), "open": _has("open_loop_in_foreach2")})
def _replaced_in_chunks(seed: int) -> bool:
    flow = generate(seed, loops=True, replace_body=True)
    return flow.replaced in flow.chunk_items


# a body replaced by a decorator (no self.next()): a loop inside a foreach; a nested foreach
# body; the first body step of a foreach that runs in chunks
REPLACED_SEEDS = _first_seeds(
    {"loop": _replaced("lp", 1), "item": _replaced("item", 2), "chunk": _replaced_in_chunks}
)
# every foreach whose body may run in chunks does, two tasks a chunk
CHUNKED = chunked_env(2)


def _fails_joining_chunks(level: int) -> Callable[[int], bool]:
    def matches(seed: int) -> bool:
        return generate(seed, fail_marker="marker").failing_level == level

    return matches


# a step that fails while a marker exists: the join of a nested foreach whose body may run
# in chunks (a fanout op's two paths and a regroup), after every task of its two-step body
# succeeded, which re-execution must reuse whichever path ran (a top-level one:
# test_chunks.py; `_fails_joining_chunks(0)` finds a random one); and (loops=True) seed 131,
# whose top-level foreach sits on a switch's branch not taken, before the step that fails:
# Dagster refused to plan its re-execution while that fan-out op was skipped (the switch now
# marks the branch: wiring.marking_switches; the generator's `foreach_on_a_branch`)
REEXECUTED = [*((seed, False) for seed in _first_seeds({"nested": _fails_joining_chunks(1)})), (131, True)]


def _workspace(name: str, src: str) -> Workspace:
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_ROOT))
    flow = d / f"{name}.py"
    flow.write_text(src)
    home = d / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return Workspace(dir=d, flow=flow, dagster_home=home)


def _matches_native(cls_name: str, ws: Workspace, src: str, chunk_items: frozenset[str] = frozenset()) -> None:
    """Native and Dagster runs have equal artifacts and task counts; with `chunk_items` (first steps of
    bodies that may run in chunks), a second Dagster run in chunks too, whose chunk ops ran
    if any of those steps ran natively (a foreach on a branch not taken runs none)."""
    try:
        ws.metaflow("run")
        native = artifacts_by_task(latest_run_pathspec(cls_name))
        out = ws.compile()
        for env in ({}, CHUNKED) if chunk_items else ({},):
            ws.dagster_execute(out, cls_name, **env)
            run = ws.last_dagster_run()
            dag = f"{cls_name}/{metaflow_run_id(run.run_id)}"
            assert artifacts_by_task(dag) == native, (env, src)
            # `trigger --wait`'s progress counts the tasks Metaflow ran: no op on a branch not
            # taken, every iteration of a loop, every task of a chunk
            assert ws.tasks_done(run.run_id) == len(native), (env, src)
            if env:
                chunked = any(k.startswith("chunk_") for k in ws.step_keys(run.run_id, "STEP_SUCCESS"))
                assert chunked == any(step in chunk_items for step, _path, _loops in native), src
    finally:
        shutil.rmtree(ws.dagster_home, ignore_errors=True)


# a top-level open switch into a split's join, its branch not taken a foreach ending in its
# join (its body may chunk: both paths), the other a switch ending in a merge: Dagster
# skips that join or merge, and the split's join must still run on what was taken (failed
# before; the generator's `open_branch_through_*` features find more, e.g. seed 120 through
# a split; tests/unit/test_wiring_plan.py has each way a branch ends)
REJOINED_SEEDS = [22]


@pytest.mark.parametrize("seed", [*_rich_seeds(3), *REJOINED_SEEDS])
def test_random_flow_matches_native(seed: int) -> None:
    flow = generate(seed)
    ws = _workspace(f"random_{seed}", flow.source)
    _matches_native(flow.cls, ws, flow.source, flow.chunk_items)


@pytest.mark.parametrize("seed", LOOP_SEEDS)
def test_random_flow_with_loops_matches_native(seed: int) -> None:
    cls_name, src = random_flow(seed, loops=True)
    _matches_native(cls_name, _workspace(f"loops_{seed}", src), src)


@pytest.mark.parametrize("seed", REPLACED_SEEDS)
def test_random_flow_without_self_next_fails_like_native(seed: int) -> None:
    """A step that always runs never calls self.next(): `flow.py run` fails with Metaflow's
    internal error; the Dagster run fails with the same message and never reaches `end`."""
    from metaflow import Run

    flow = generate(seed, loops=True, replace_body=True)
    ws = _workspace(f"replaced_{seed}", flow.source)
    try:
        res = ws.metaflow("run", check=False)
        native = res.stdout + res.stderr
        assert res.returncode != 0 and "Internal error:" in native, native[-3000:]
        message = native.split("Internal error:", 1)[1].strip().splitlines()[0].strip()
        assert f" {flow.replaced} " in message
        out = ws.compile()
        env = CHUNKED if flow.replaced in flow.chunk_items else {}
        assert ws.dagster_execute(out, flow.cls, check=False, **env).returncode != 0
        run = ws.last_dagster_run()
        assert run.status.value == "FAILURE"
        failures = [
            e.dagster_event.step_failure_data.user_failure_data.description
            for e in ws.dagster_events(run.run_id)
            if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"
        ]
        assert failures and all(d.strip() == f"Internal error: {message}" for d in failures), (failures, message)
        dag = Run(f"{flow.cls}/{metaflow_run_id(run.run_id)}", _namespace_check=False)
        assert not dag.successful and "end" not in [s.id for s in dag]
    finally:
        shutil.rmtree(ws.dagster_home, ignore_errors=True)


@pytest.mark.parametrize(("seed", "loops"), REEXECUTED)
def test_random_flow_reexecuted_from_failure_matches_native(seed: int, loops: bool) -> None:
    """A step fails while a marker file exists; with the marker gone, Dagster's re-execution
    from failure (the UI's) finishes the run: its artifacts equal a native run's, one op per
    task and in chunks (the tasks it does not run again are cloned from the failed run)."""
    # seed 131: one op per task only (its branch foreach does not chunk; a top-level chunk
    # join re-executed in chunks: test_chunks.py)
    _reexecuted_matches_native(seed, loops, skips_a_foreach=loops, both_paths=not loops)


def _reexecuted_matches_native(
    seed: int, loops: bool = False, skips_a_foreach: bool = False, both_paths: bool = True
) -> None:
    """`skips_a_foreach`: the seed is there for a top-level foreach on a branch not taken
    (checked against the native run, in case the generator changes); `both_paths`: in
    chunks too."""
    ws = _workspace(f"reexec_{seed}", "")
    marker = ws.dir / "fail"
    flow = generate(seed, loops=loops, fail_marker=str(marker))
    ws.flow.write_text(flow.source)
    try:
        ws.metaflow("run")
        native = artifacts_by_task(latest_run_pathspec(flow.cls))
        ran = {step for step, _path, _it in native}
        assert not skips_a_foreach or flow.branch_foreaches - ran, (flow.branch_foreaches, flow.source)
        out = ws.compile()
        for env in ({}, CHUNKED) if both_paths else ({},):
            marker.write_text("")
            assert ws.dagster_execute(out, flow.cls, check=False, **env).returncode != 0
            parent = ws.last_dagster_run()
            marker.unlink()
            child, _ok = ws.reexecute_from_failure(out, flow.cls, parent.run_id, **env)
            dag = f"{flow.cls}/{metaflow_run_id(child)}"
            assert artifacts_by_task(dag) == native, (env, flow.failing, flow.source)
    finally:
        shutil.rmtree(ws.dagster_home, ignore_errors=True)


def _sweep_seeds(spec: str) -> list[int]:
    """`DAGSTER_METAFLOW_SWEEP=100-199` (or `7,19,40-45`): the seeds of the opt-in sweep."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    return seeds


SWEEP = _sweep_seeds(os.environ.get("DAGSTER_METAFLOW_SWEEP", ""))


@pytest.mark.skipif(not SWEEP, reason="opt-in: DAGSTER_METAFLOW_SWEEP=<seeds>, e.g. 100-199")
@pytest.mark.parametrize("seed", SWEEP or [0])
def test_sweep_random_flow_matches_native_and_reexecutes(seed: int) -> None:
    """Many more random flows than the suite runs (README, Development), with loops: the
    seed's flow run natively and under Dagster (one op per task, and in chunks when a body
    may chunk); then the seed's flow with a step failing while a marker exists, re-executed
    from failure in both paths, against native. Run it with DAGSTER_METAFLOW_FORK=0 too."""
    flow = generate(seed, loops=True)
    _matches_native(flow.cls, _workspace(f"sweep_{seed}", flow.source), flow.source, flow.chunk_items)
    _reexecuted_matches_native(seed, loops=True)
