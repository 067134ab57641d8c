"""Dagster's UI in a real browser: dagster-webserver started here on a compiled flow, driven
with headless Debian Chromium through Playwright. The job graph has one node per step with
the flow's edges; a run launched from the Launchpad with a changed parameter succeeds, its
ops show the Metaflow task in their metadata, and the Metaflow client sees the new value.

`DAGSTER_METAFLOW_SCREENSHOTS=docs` writes the screenshots to docs/ (the README's images).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, Workspace, stop_group
from services import free_port, wait_for_webserver

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
# Debian's chromium, headless, nothing fetched from the network but the webserver
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# HelloFlow: a foreach, its join, then a static split and its join
EDGES = {
    ("op_start", "op_square"), ("op_square", "op_join"), ("op_join", "op_fork"),
    ("op_fork", "op_left"), ("op_fork", "op_right"), ("op_left", "op_merge"),
    ("op_right", "op_merge"), ("op_merge", "op_end"),
    # the foreach body's chunk op (a foreach wider than the chunking threshold)
    ("op_start", "chunk_square"), ("chunk_square", "op_join"),
}
# every op of the rendered graph with the ops its inputs come from (the IO boxes' titles
# read "upstream: String\n\nFrom:\nop_fork:result")
GRAPH_JS = """() => Array.from(document.querySelectorAll('[class*="OpNode_nodeContainer"]')).map(c => ({
    name: c.querySelector('[class*="OpNode_label"]').textContent,
    inputs: Array.from(c.querySelectorAll('[title*="From:"]')).map(e => e.getAttribute('title')),
}))"""


def _graphql(base: str, query: str, variables: dict[str, Any] | None = None) -> Any:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{base}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]


@pytest.fixture
def webserver(workspace: Workspace) -> Iterator[tuple[str, Path]]:
    """dagster-webserver on the compiled flow; yields its URL and the definitions file."""
    # runs launched from the UI start at once (Dagster 1.13's default coordinator queues them
    # for a dagster-daemon)
    (workspace.dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n"
        "  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    out = workspace.compile()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(workspace.dir / "webserver.log", "wb")  # noqa: SIM115 - kept open for the server
    server = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-f", str(out), "-h", "127.0.0.1", "-p", str(port)],
        cwd=workspace.dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "DAGSTER_HOME": str(workspace.dagster_home), "DAGSTER_METAFLOW_UI_URL": base},
    )
    try:
        wait_for_webserver(base, server, workspace.dir / "webserver.log")
        _graphql(base, "mutation { setNuxSeen }")  # no "join the community" dialog over the pages
        yield base, out
    finally:
        stop_group(server)
        log.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
@pytest.mark.flow("hello_flow.py")
def test_graph_launchpad_and_run_in_chromium(workspace: Workspace, webserver: tuple[str, Path]) -> None:
    assert CHROMIUM is not None
    from dagster import DagsterInstance
    from metaflow import Run
    from playwright.sync_api import expect, sync_playwright

    base, out = webserver
    shots = Path(os.environ.get("DAGSTER_METAFLOW_SCREENSHOTS") or workspace.dir).resolve()
    shots.mkdir(parents=True, exist_ok=True)
    job = f"{base}/locations/{out.name}/jobs/HelloFlow"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)

            # the job graph: an asset job opens on its asset; as ops, the flow's graph asset
            # expanded holds one node per step (and the foreach body's chunk op), edges as in
            # the flow
            page.goto(job, wait_until="networkidle")
            page.get_by_text("View as Asset Graph").click()
            page.locator('[data-tooltip="HelloFlow_steps"]').first.click()
            page.get_by_text("Expand graph").click()
            page.locator('[data-tooltip="op_end"]').wait_for()
            nodes = page.evaluate(GRAPH_JS)
            assert sorted(n["name"] for n in nodes) == sorted({op for edge in EDGES for op in edge})
            edges = {
                (line.split(":")[0], n["name"])
                for n in nodes for title in n["inputs"]
                for line in title.split("From:")[1].split() if line.startswith(("op_", "chunk_"))
            }
            assert edges == EDGES
            page.screenshot(path=str(shots / "ui-graph.png"))

            # the Launchpad: the flow's parameters are op_start's config; change them, launch
            page.goto(f"{job}/playground", wait_until="networkidle")
            editor = page.locator(".CodeMirror")
            expect(editor).to_contain_text("alpha: 0.5")
            editor.click()
            page.keyboard.press("Control+A")
            page.keyboard.insert_text(
                "ops:\n  HelloFlow_steps:\n    ops:\n      op_start:\n        config:\n"
                "          alpha: 2.0\n          n: 4\n"
            )
            expect(editor).to_contain_text("alpha: 2.0")
            expect(page.get_by_text("No errors")).to_be_visible()
            launch = page.get_by_role("button", name="Launch Run")
            expect(launch).to_be_enabled()
            page.screenshot(path=str(shots / "ui-launchpad.png"))
            launch.click()
            page.wait_for_url("**/runs/*")
            run_id = page.url.rstrip("/").rsplit("/", 1)[1]

            # the run page: success; an op's output metadata is its Metaflow task, and op_end
            # materializes the flow's asset with the Metaflow run
            expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=90_000)
            mf_run = metaflow_run_id(run_id)
            page.get_by_placeholder("Filter…").fill("step:HelloFlow_steps.op_merge")
            expect(page.get_by_text(f"HelloFlow/{mf_run}/merge/merge", exact=True)).to_be_visible()
            page.get_by_placeholder("Filter…").fill("step:HelloFlow_steps.op_end")
            expect(page.get_by_text(f"HelloFlow/{mf_run}", exact=True).first).to_be_visible()
            page.screenshot(path=str(shots / "ui-run.png"))
        finally:
            browser.close()

    with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
        drun = instance.get_run_by_id(run_id)
    assert drun is not None and drun.status.value == "SUCCESS"
    assert drun.run_config["ops"]["HelloFlow_steps"]["ops"]["op_start"]["config"] == {"alpha": 2.0, "n": 4}

    run = Run(f"HelloFlow/{mf_run}", _namespace_check=False)
    assert run.successful
    assert (run["start"].task.data.alpha, run["start"].task.data.n) == (2.0, 4)
    assert len(list(run["square"].tasks())) == 4
    assert run["end"].task.data.total == 2.0 * (0 + 1 + 4 + 9)
    assert run["end"].task.metadata_dict["dagster-run-url"] == f"{base}/runs/{run_id}"
