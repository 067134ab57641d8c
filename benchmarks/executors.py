"""Dagster run time / native `python flow.py run` time, per executor, in one invocation.

    python benchmarks/executors.py [--repeat N] [--executors threads,forkserver,...]

For a linear 10-step flow and a 16-wide foreach it measures, on this machine and in this
invocation:
  native   wall time of `python flow.py run`
  dagster  wall time of `dagster job execute -f <compiled> -j <job>` (whole command,
           including Dagster's own start-up) and the run's duration as Dagster records it
           (RUN_START -> RUN_SUCCESS)
and prints each Dagster time divided by the native time. Medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flows  # noqa: E402
from trigger import timed  # noqa: E402


def last_run_duration(dagster_home: Path) -> float:
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        stats = instance.get_run_stats(run.run_id)
        assert stats.start_time and stats.end_time, stats
        return stats.end_time - stats.start_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--executors", default="threads,forkserver,multiprocess")
    args = ap.parse_args()
    flows.compile_package()
    executors = [e for e in args.executors.split(",") if e]
    bindir = Path(sys.executable).parent
    dagster_cli = str(bindir / "dagster")

    rows = []
    with tempfile.TemporaryDirectory(prefix="dm-bench-") as tmp:
        root = Path(tmp)
        env = dict(os.environ)
        env.setdefault("USER", "bench")
        env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(root)
        for label, (flow_name, source) in (
            ("linear 10 steps", flows.linear(10)),
            ("foreach 16 wide", flows.foreach(16)),
        ):
            flow = root / f"{flow_name.lower()}.py"
            flow.write_text(source)
            native = [timed([sys.executable, flow.name, "run"], root, env) for _ in range(args.repeat)]
            native_t = statistics.median(native)
            print(f"{label}: native `flow.py run` {native_t:.2f}s", flush=True)
            for ex in executors:
                out = root / f"{flow_name.lower()}_{ex}.py"
                timed(
                    [sys.executable, flow.name, "dagster", "create", out.name, "--executor", ex],
                    root,
                    env,
                )
                walls, runs = [], []
                for i in range(args.repeat):
                    home = root / f"home_{flow_name}_{ex}_{i}"
                    home.mkdir()
                    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
                    denv = dict(env, DAGSTER_HOME=str(home))
                    walls.append(timed([dagster_cli, "job", "execute", "-f", out.name, "-j", flow_name], root, denv))
                    runs.append(last_run_duration(home))
                wall, run = statistics.median(walls), statistics.median(runs)
                rows.append((label, ex, native_t, wall, run))
                print(
                    f"  {ex:<12} command {wall:6.2f}s ({wall / native_t:4.2f}x)   "
                    f"run {run:6.2f}s ({run / native_t:4.2f}x)",
                    flush=True,
                )

    print("\n| flow | executor | native run | dagster command | ratio | dagster run | ratio |")
    print("|---|---|---|---|---|---|---|")
    for label, ex, n, w, r in rows:
        print(f"| {label} | {ex} | {n:.2f}s | {w:.2f}s | {w / n:.2f}x | {r:.2f}s | {r / n:.2f}x |")


if __name__ == "__main__":
    main()
