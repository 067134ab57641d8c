"""The flows' assets in Dagster's UI, in a real browser: two compiled flows, AssetUpFlow (with
`--asset model --asset score`) and AssetDownFlow (`@trigger_on_finish(flow="AssetUpFlow")`),
loaded in one dagster-webserver and driven with headless Debian Chromium through Playwright.

The global lineage graph shows the four assets and the edge AssetUpFlow -> AssetDownFlow;
after one triggered run of the upstream, its artifact and flow asset pages show the
materialization's metadata, which the instance holds too; a failed run materializes nothing.

`DAGSTER_METAFLOW_SCREENSHOTS=docs` writes the screenshots to docs/ (ui-asset-graph.png,
ui-asset-page.png) as test_ui.py does for the job's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, FLOWS, Workspace, stop_group, survivors, wait_for
from services import free_port, wait_for_webserver

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
UP, DOWN = "AssetUpFlow", "AssetDownFlow"
UP_KEYS = ([UP], [UP, "model"], [UP, "score"])
# the asset nodes of the lineage graph (label, box in the SVG's coordinates) and its edges
# (start and end points of each path); node boxes and edge paths share one coordinate system
GRAPH_JS = """() => {
    const nodes = Array.from(document.querySelectorAll('foreignObject')).filter(
        f => !f.classList.contains('group') && f.querySelector('[class*="AssetNode_assetNodeBox"]')
    ).map(f => ({
        label: f.querySelector('[class*="AssetNode_assetName"] [data-tooltip]').textContent,
        text: f.querySelector('[class*="AssetNode_assetNodeBox"]').innerText,
        x: +f.getAttribute('x'), y: +f.getAttribute('y'),
        w: +f.getAttribute('width'), h: +f.getAttribute('height'),
    }));
    const edges = Array.from(document.querySelectorAll('svg path[stroke*="lineage-edge"]')).map(
        p => (p.getAttribute('d').match(/-?[0-9.]+/g) || []).map(Number)
    ).filter(n => n.length >= 4).map(n => ({x1: n[0], y1: n[1], x2: n[n.length - 2], y2: n[n.length - 1]}));
    return {nodes, edges};
}"""
ASSET_NODES = """{ assetNodes { assetKey { path } dependencyKeys { path } groupName kinds
    owners { ... on TeamAssetOwner { team } ... on UserAssetOwner { email } } } }"""


def _graphql(base: str, query: str) -> Any:
    body = json.dumps({"query": query, "variables": {}}).encode()
    req = urllib.request.Request(f"{base}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())
    assert "errors" not in out, out
    return out["data"]


def _materializations(home: Path) -> dict[tuple[str, ...], Any]:
    """The latest materialization event of each asset (None: never materialized)."""
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        return {tuple(k): instance.get_latest_materialization_event(AssetKey(k)) for k in (*UP_KEYS, [DOWN])}


def _open_page(pw: Any, timeout_ms: int) -> tuple[Any, Any]:
    """Headless Debian chromium and one 1400x900 page (close the browser when done)."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(timeout_ms)
    return browser, page


def _runs(home: Path, job: str) -> list[Any]:
    from dagster import DagsterInstance, RunsFilter

    with DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_runs(filters=RunsFilter(job_name=job)))


def _ours(home: Path) -> list[int]:
    """Processes (but this one) running with this test's DAGSTER_HOME: servers, run workers, steps."""
    import psutil

    out = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("DAGSTER_HOME") == str(home):
                out.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out



@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
@pytest.mark.flow("asset_up_flow.py")
def test_asset_lineage_and_materialization_metadata_in_chromium(workspace: Workspace) -> None:
    assert CHROMIUM is not None
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # the graph loads its live data slowly on a busy machine

    shutil.copy(FLOWS / "asset_down_flow.py", workspace.dir / "asset_down_flow.py")
    up = workspace.compile("--asset", "model", "--asset", "score", out="up_dagster.py")
    down_res = workspace.run(sys.executable, "asset_down_flow.py", "dagster", "create", "down_dagster.py")
    down = workspace.dir / "down_dagster.py"
    assert "AssetDownFlow_trigger_on_finish" in down_res.stdout + down_res.stderr

    # runs launched from the UI ("Materialize") start at once, without a daemon
    (workspace.dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n"
        "  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    shots = Path(os.environ.get("DAGSTER_METAFLOW_SCREENSHOTS") or workspace.dir).resolve()
    shots.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = workspace.dir / "webserver.log"
    log = open(log_path, "wb")  # noqa: SIM115 - kept open for the server
    # no daemon: AssetDownFlow's sensor does not fire, so only the upstream materializes
    server = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-f", str(up), "-f", str(down), "-h", "127.0.0.1", "-p", str(port)],
        cwd=workspace.dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "DAGSTER_HOME": str(workspace.dagster_home), "DAGSTER_METAFLOW_UI_URL": base},
    )
    try:
        # one successful run of the upstream while the webserver starts
        workspace.metaflow("dagster", "trigger", "--wait", "--run-id-file", "up_run")
        mf_run = (workspace.dir / "up_run").read_text().strip()
        (ok_run,) = _runs(workspace.dagster_home, UP)
        assert ok_run.status.value == "SUCCESS" and metaflow_run_id(ok_run.run_id) == mf_run

        wait_for_webserver(base, server, log_path)
        _graphql(base, "mutation { setNuxSeen }")  # no "join the community" dialog
        # both code locations loaded, the assets as declared (Dagster's own view of them)
        locations = _graphql(base, "{ workspaceOrError { ... on Workspace { locationEntries { name "
                                   "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
        entries = locations["workspaceOrError"]["locationEntries"]
        assert {e["name"]: e["locationOrLoadError"]["__typename"] for e in entries} == {
            "up_dagster.py": "RepositoryLocation", "down_dagster.py": "RepositoryLocation",
        }, entries
        nodes = {tuple(n["assetKey"]["path"]): n for n in _graphql(base, ASSET_NODES)["assetNodes"]}
        assert set(nodes) == {*map(tuple, UP_KEYS), (DOWN,)}
        assert [d["path"] for d in nodes[(DOWN,)]["dependencyKeys"]] == [[UP]]
        assert all(not nodes[tuple(k)]["dependencyKeys"] for k in UP_KEYS)
        user = os.environ["USER"]
        for key, node in nodes.items():
            assert node["groupName"] == key[0] and node["kinds"] == ["metaflow"], node
            assert node["owners"] == [{"team": user}], node

        with sync_playwright() as pw:
            browser, page = _open_page(pw, timeout_ms=30_000)
            try:

                # (1) the global lineage graph: one collapsed node per group (= job); expand
                # both, then load the page again so the graph is fitted to the viewport
                page.goto(f"{base}/asset-groups", wait_until="networkidle")
                for group in (UP, DOWN):
                    node = page.locator("foreignObject.group", has=page.locator(f'[data-tooltip="{group}"]'))
                    node.locator('[aria-label="unfold_more"]').click()
                expect(page.locator('[class*="AssetNode_assetNodeBox"]')).to_have_count(4)
                page.reload(wait_until="networkidle")
                boxes = page.locator('[class*="AssetNode_assetNodeBox"]')
                expect(boxes).to_have_count(4)
                for label in (UP, "model", "score"):
                    expect(boxes.filter(has=page.locator(f'[data-tooltip="{label}"]'))).to_contain_text(
                        "Materialized"
                    )
                expect(boxes.filter(has=page.locator(f'[data-tooltip="{DOWN}"]'))).to_contain_text(
                    "Never materialized"
                )
                graph = page.evaluate(GRAPH_JS)
                by_label = {n["label"]: n for n in graph["nodes"]}
                assert sorted(by_label) == sorted([UP, DOWN, "model", "score"]), graph

                def joins(e: dict[str, float], a: dict[str, float], b: dict[str, float]) -> bool:
                    """The edge leaves a's right side and ends (arrowhead) at b's left side."""
                    return (
                        abs(e["x1"] - (a["x"] + a["w"])) <= 2 and a["y"] <= e["y1"] <= a["y"] + a["h"]
                        and b["x"] - 20 <= e["x2"] <= b["x"] + 2 and b["y"] <= e["y2"] <= b["y"] + b["h"]
                    )

                linked = {
                    (p["label"], q["label"])
                    for e in graph["edges"] for p in graph["nodes"] for q in graph["nodes"]
                    if p is not q and joins(e, p, q)
                }
                assert linked == {(UP, DOWN)}, graph
                page.screenshot(path=str(shots / "ui-asset-graph.png"), full_page=True)

                # (2) the artifact asset's page: the last materialization's metadata; the
                # page scrolls inside the app, so a taller viewport shows all of it
                page.set_viewport_size({"width": 1400, "height": 1350})
                page.goto(f"{base}/assets/{UP}/model", wait_until="networkidle")
                metadata = page.locator("table").filter(has_text="metaflow/type")
                expect(metadata).to_be_visible()
                for key in ("metaflow/pathspec", "metaflow/client", "metaflow/type", "metaflow/size_bytes",
                            "metaflow/value", "metaflow/producer", "metaflow/card"):
                    expect(metadata.get_by_text(key, exact=True)).to_be_visible()
                row = metadata.locator("tr").filter(has=page.get_by_text("metaflow/value", exact=True))
                assert json.loads(row.locator("td").last.inner_text()) == {"w": [1, 2, 3]}
                row = metadata.locator("tr").filter(has=page.get_by_text("metaflow/type", exact=True))
                expect(row.locator("td").last).to_have_text("dict")
                expect(metadata).to_contain_text(f"{UP}/{mf_run}/start/")  # the producing task
                expect(page.get_by_text(f"Artifact model of {UP}'s end step.")).to_be_visible()
                page.screenshot(path=str(shots / "ui-asset-page.png"), full_page=True)

                # the flow asset's page: the Metaflow run, its artifact table, the downstream
                page.goto(f"{base}/assets/{UP}", wait_until="networkidle")
                metadata = page.locator("table").filter(has_text="metaflow/run_pathspec")
                row = metadata.locator("tr").filter(has=page.get_by_text("metaflow/run_pathspec", exact=True))
                expect(row.locator("td").last).to_have_text(f"{UP}/{mf_run}")
                expect(metadata).to_contain_text(f'run = Run("{UP}/{mf_run}")')
                table = page.locator("table").filter(has_text="preview").last
                expect(table).to_contain_text("model")
                expect(table).to_contain_text("{'w': [1, 2, 3]}")
                expect(table).to_contain_text("0.93")
                expect(page.get_by_role("link", name=DOWN).first).to_be_visible()  # downstream assets
            finally:
                browser.close()

        # the instance: what the pages showed, from the run that materialized it
        latest = _materializations(workspace.dagster_home)
        assert latest[(DOWN,)] is None
        for key in map(tuple, UP_KEYS):
            assert latest[key] is not None and latest[key].run_id == ok_run.run_id, key
        flow_md = latest[(UP,)].asset_materialization.metadata
        assert {"metaflow/run_pathspec", "metaflow/client", "metaflow/artifacts"} <= set(flow_md)
        assert flow_md["metaflow/run_pathspec"].value == f"{UP}/{mf_run}"
        rows = {r.data["name"]: r.data for r in flow_md["metaflow/artifacts"].value.records}
        assert {"model", "score"} <= set(rows) and rows["score"]["type"] == "float"
        model_md = latest[(UP, "model")].asset_materialization.metadata
        assert {"metaflow/type", "metaflow/size_bytes", "metaflow/value", "metaflow/card"} <= set(model_md)
        assert model_md["metaflow/type"].value == "dict" and model_md["metaflow/size_bytes"].value > 0
        assert model_md["metaflow/value"].value == {"w": [1, 2, 3]}
        assert Path(model_md["metaflow/card"].value).is_file()  # the start step's @card
        score_md = latest[(UP, "score")].asset_materialization.metadata
        assert score_md["metaflow/type"].value == "float" and score_md["metaflow/value"].value == 0.93
        assert re.fullmatch(rf"{UP}/{mf_run}/end/[^/]+/score", score_md["metaflow/pathspec"].value)

        # a failed run materializes nothing: the latest materializations are the same events
        res = workspace.metaflow("dagster", "trigger", "--fail", "true", "--wait", check=False)
        assert res.returncode != 0, res.stdout + res.stderr
        failed = [r for r in _runs(workspace.dagster_home, UP) if r.run_id != ok_run.run_id]
        assert len(failed) == 1 and failed[0].status.value == "FAILURE", failed
        events = workspace.dagster_events(failed[0].run_id)
        assert not [e for e in events if e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"]
        after = _materializations(workspace.dagster_home)
        assert after[(DOWN,)] is None
        for key in map(tuple, UP_KEYS):
            assert (after[key].run_id, after[key].timestamp) == (latest[key].run_id, latest[key].timestamp), key

        # "Materialize" on an artifact's page runs the flow: Dagster asks to materialize the
        # whole multi-asset, then launches the flow's own job, one op per step
        with sync_playwright() as pw:
            browser, page = _open_page(pw, timeout_ms=60_000)
            try:
                page.goto(f"{base}/assets/{UP}/model", wait_until="networkidle")
                page.get_by_text("Materialize", exact=True).first.click()
                page.get_by_role("button", name="Confirm").click()
                known = {ok_run.run_id, failed[0].run_id}
                new = wait_for(
                    "the run Materialize launched",
                    lambda: [r for r in _runs(workspace.dagster_home, UP) if r.run_id not in known and r.is_finished],
                    timeout=120,
                )
            finally:
                browser.close()
        from metaflow import Run

        (ui_run,) = new
        assert ui_run.status.value == "SUCCESS" and ui_run.job_name == UP
        assert Run(f"{UP}/{metaflow_run_id(ui_run.run_id)}", _namespace_check=False).successful
        final = _materializations(workspace.dagster_home)
        assert all(final[tuple(k)].run_id == ui_run.run_id for k in UP_KEYS)
    finally:
        stop_group(server)
        log.close()
    # nothing left running with this test's instance: webserver, code servers, run workers
    assert survivors(_ours(workspace.dagster_home), within=15) == []
