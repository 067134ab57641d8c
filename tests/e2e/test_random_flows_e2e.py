"""A small sample of random flows (tests/shapegen.py) run natively and under Dagster."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import _ROOT, Workspace, artifacts_by_task, latest_run_pathspec

from dagster_metaflow.runtime import metaflow_run_id

sys.path.insert(0, str(Path(__file__).parent.parent))
from shapegen import random_flow  # noqa: E402

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


@pytest.mark.parametrize("seed", _rich_seeds(3))
def test_random_flow_matches_native(seed: int) -> None:
    cls_name, src = random_flow(seed)
    d = Path(tempfile.mkdtemp(prefix=f"random{seed}-", dir=_ROOT))
    flow = d / f"random_{seed}.py"
    flow.write_text(src)
    home = d / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    ws = Workspace(dir=d, flow=flow, dagster_home=home)
    try:
        ws.metaflow("run")
        native = latest_run_pathspec(cls_name)
        out = ws.compile()
        ws.dagster_execute(out, cls_name)
        dag = f"{cls_name}/{metaflow_run_id(ws.last_dagster_run().run_id)}"
        assert artifacts_by_task(dag) == artifacts_by_task(native), src
    finally:
        shutil.rmtree(home, ignore_errors=True)
