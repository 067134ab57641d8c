"""How long the Dagster UI takes to show a (very wide) run's page, in headless Chromium.

    python benchmarks/ui_run_page.py DAGSTER_HOME [--run-id ID]

Starts dagster-webserver on the instance's deployments (its workspace file), opens
`/runs/<id>` (the newest run by default) in Debian's Chromium through Playwright and times
from navigation until the page shows the run's status and its step list ("op_end" in the
Gantt chart's step names), then until the network is idle. Keep the instance of a
`benchmarks/wide.py --keep DIR` run for this.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flows  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("home")
    ap.add_argument("--run-id")
    ap.add_argument("--screenshot", help="save the page, once the network is idle, to this PNG")
    args = ap.parse_args()
    home = Path(args.home).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        run_id = args.run_id or instance.get_runs(limit=1)[0].run_id
    port = flows.local_servers().free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-w", str(home / "dagster_metaflow_workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("dagster-webserver did not start") from None
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(300_000)
            page.goto(base, wait_until="networkidle")  # the app itself, loaded once
            t0 = time.perf_counter()
            page.goto(f"{base}/runs/{run_id}")
            page.get_by_text("Success", exact=False).first.wait_for()
            status = time.perf_counter() - t0
            page.get_by_text("op_end").first.wait_for()
            steps = time.perf_counter() - t0
            page.wait_for_load_state("networkidle")
            idle = time.perf_counter() - t0
            if args.screenshot:
                page.screenshot(path=args.screenshot)
            browser.close()
        print(f"run {run_id}: status shown {status:.1f}s, steps shown {steps:.1f}s, network idle {idle:.1f}s")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
