"""How fast a run starts when dagster-daemon launches it, against `trigger`'s own launch.

    python benchmarks/launch.py [--repeat 3]

Two instances, the same linear 10-step flow:
  trigger   default run coordinator: `trigger` forks the run worker itself
  daemon    QueuedRunCoordinator + MetaflowRunLauncher + a running `dagster-daemon`:
            `trigger` queues the run, the daemon dequeues it and the launcher forks the
            worker from its worker zygote (or, with --no-fork, starts a fresh
            `python -m dagster_metaflow.run_worker execute_run`)
For each run it prints, from the run's event log: launch -> first event of the worker
(PIPELINE_STARTING/dequeue -> PIPELINE_START) and PIPELINE_START -> PIPELINE_SUCCESS.
The queue's own wait (the daemon polls it) is left out: that is Dagster's, not ours.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flows  # noqa: E402

QUEUED = """telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
run_launcher:
  module: dagster_metaflow.run_launcher
  class: MetaflowRunLauncher
"""


def _phases(home: Path) -> tuple[float, float]:
    """(STARTING -> START, START -> SUCCESS) of the newest run, in seconds."""
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = str(home)
    with DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        at: dict[str, float] = {}
        for rec in instance.get_records_for_run(run.run_id, limit=100_000).records:
            ev = rec.event_log_entry.dagster_event
            if ev is not None and ev.event_type_value not in at:
                at[ev.event_type_value] = rec.event_log_entry.timestamp
        assert run.status.value == "SUCCESS", run.status
        return at["PIPELINE_START"] - at["PIPELINE_STARTING"], at["PIPELINE_SUCCESS"] - at["PIPELINE_START"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-fork", action="store_true", help="DAGSTER_METAFLOW_FORK=0 for the daemon")
    args = ap.parse_args()
    flows.compile_package()
    name, source = flows.linear(10)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="dm-bench-launch-") as tmp:
        root = Path(tmp)
        (root / "linear.py").write_text(source)
        results: dict[str, list[tuple[float, float]]] = {"trigger": [], "daemon": []}
        homes = {"trigger": root / "home_trigger", "daemon": root / "home_daemon"}
        homes["trigger"].mkdir()
        homes["daemon"].mkdir()
        (homes["trigger"] / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        (homes["daemon"] / "dagster.yaml").write_text(QUEUED)
        base = dict(os.environ, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root))
        base.setdefault("USER", "bench")
        for kind, home in homes.items():
            env = dict(base, DAGSTER_HOME=str(home))
            subprocess.run([py, "linear.py", "dagster", "create", f"linear_{kind}.py"], cwd=root, env=env, check=True, capture_output=True)
        denv = dict(base, DAGSTER_HOME=str(homes["daemon"]))
        if args.no_fork:
            denv["DAGSTER_METAFLOW_FORK"] = "0"
        daemon = subprocess.Popen(
            [str(Path(py).parent / "dagster-daemon"), "run", "-w", str(homes["daemon"] / "dagster_metaflow_workspace.yaml")],
            cwd=root, env=denv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            time.sleep(5)
            for _ in range(args.repeat):
                for kind, home in homes.items():
                    env = dict(base, DAGSTER_HOME=str(home))
                    subprocess.run([py, "linear.py", "dagster", "trigger", "--wait"], cwd=root, env=env, check=True, capture_output=True)
                    results[kind].append(_phases(home))
        finally:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)
        for kind, rows in results.items():
            start = statistics.median(r[0] for r in rows)
            run = statistics.median(r[1] for r in rows)
            print(f"{kind:8} launch -> worker running {start:.2f}s   run {run:.2f}s   "
                  f"[{', '.join(f'{a:.2f}+{b:.2f}' for a, b in rows)}]")


if __name__ == "__main__":
    main()
