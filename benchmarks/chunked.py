"""One Dagster op per task against a chunked fan-out (prototype), on a wide foreach.

    python benchmarks/chunked.py --widths 300,1000,3000 --chunk 50 [--repeat 1]

For each width it compiles `start -> body x N -> join -> end`, then alternates, --repeat times:
  per-task  `dagster job execute` of the compiled file (what `create` makes today)
  chunked   `dagster job execute` of benchmarks/chunked_defs.py: the same flow and runtime,
            each body op running --chunk tasks one after another
and prints, for each: wall time, CPU-s per task (whole machine, /proc/stat), event log per
task (the run's own SQLite file, and its event JSON) and the ratio chunked / per-task. Each
run's `join` total is checked through the Metaflow client. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flows  # noqa: E402
from trigger import timed  # noqa: E402
from wide import _busy_cpu_seconds  # noqa: E402

HERE = Path(__file__).resolve().parent


def _last_run(home: Path, flow_name: str, width: int) -> tuple[int, int]:
    """(bytes on disk, bytes of event JSON) of the newest run, after checking its result."""
    from dagster import DagsterInstance
    from metaflow import Flow, namespace

    from dagster_metaflow.runtime import metaflow_run_id

    os.environ["DAGSTER_HOME"] = str(home)
    with DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
    assert run.status.value == "SUCCESS", run.status
    namespace(None)
    total = Flow(flow_name)[metaflow_run_id(run.run_id)]["join"].task.data.total
    assert total == sum(2 * i for i in range(width)), total
    db = home / "history" / "runs" / f"{run.run_id}.db"
    with sqlite3.connect(db) as conn:
        (json_bytes,) = conn.execute("select sum(length(event)) from event_logs").fetchone()
    return sum(p.stat().st_size for p in db.parent.glob(f"{run.run_id}.db*")), int(json_bytes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="300,1000")
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    dagster_cli = str(Path(sys.executable).parent / "dagster")
    with tempfile.TemporaryDirectory(prefix="dm-bench-chunked-") as tmp:
        root = Path(tmp)
        env = flows.bench_env(root)
        os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(root)
        for width in (int(w) for w in args.widths.split(",") if w):
            name, source = flows.foreach(width)
            flow = root / f"{name.lower()}.py"
            flow.write_text(source)
            out = root / f"{name.lower()}_dagster.py"
            timed([sys.executable, flow.name, "dagster", "create", out.name], root, env)
            modes = {
                "per-task": ([dagster_cli, "job", "execute", "-f", out.name, "-j", name], env),
                "chunked": (
                    [dagster_cli, "job", "execute", "-f", str(HERE / "chunked_defs.py"), "-j", "chunked"],
                    dict(env, DM_BENCH_COMPILED=str(out), DM_BENCH_CHUNK=str(args.chunk)),
                ),
            }
            res: dict[str, list[tuple[float, float, int, int]]] = {m: [] for m in modes}
            for _ in range(args.repeat):
                for mode, (cmd, menv) in modes.items():
                    c0 = _busy_cpu_seconds()
                    wall = timed(cmd, root, menv)
                    cpu = _busy_cpu_seconds() - c0
                    disk, js = _last_run(root / "home", name, width)
                    res[mode].append((wall, cpu, disk, js))
            med = {m: [statistics.median(x[i] for x in v) for i in range(4)] for m, v in res.items()}
            for mode, (wall, cpu, disk, js) in med.items():
                print(
                    f"width {width} {mode:8}: {wall:6.1f}s, {cpu / width:.3f} CPU-s/task, "
                    f"event log {disk / width / 1024:.1f} KB/task ({js / width / 1024:.1f} KB JSON)",
                    flush=True,
                )
            print(f"width {width}: chunked / per-task wall {med['chunked'][0] / med['per-task'][0]:.2f}x "
                  f"(chunk {args.chunk})", flush=True)


if __name__ == "__main__":
    main()
