"""Whole commands a user types, against native `python flow.py run`, in one invocation.

    python benchmarks/trigger.py [--repeat N] [--shapes linear,foreach16,nested4x4,skewed,barrier]

(default: linear,foreach16,nested4x4; `skewed` and `barrier` are the two nested flows with
one slow outer item, the second the one where the barrier between the levels costs time)

For each shape it alternates, --repeat times:
  native    `python flow.py run`
  trigger   `python flow.py dagster trigger --wait` (deployment created once beforehand;
            default instance, no daemon: the CLI launches the run worker itself)
  execute   `dagster job execute -f <compiled> -j <job>`
  bare      with --bare (linear, foreach16, nested4x4): `dagster job execute` of the same
            shape as a plain Dagster job whose ops do nothing (benchmarks/bare_jobs.py,
            Dagster's in-process executor): what Dagster itself costs for that shape
  one_op    with --bare: the same for a job of one op doing nothing: what any
            `dagster job execute` costs on this instance before its ops' work
and prints medians and each median divided by native's. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flows  # noqa: E402

SHAPES = {
    "linear": lambda: flows.linear(10),
    "foreach16": lambda: flows.foreach(16),
    "nested4x4": lambda: flows.nested(4, 4),
    # outer item 0 takes 4 s before fanning out, every leaf 1 s: item 0's own leaves are on
    # the critical path, natively too, so the collect barrier between the levels costs no
    # wall time here (not in the default set)
    "skewed": lambda: flows.nested(4, 4, skew_s=4.0, leaf_s=1.0),
    # outer item 0 takes 4 s and its leaves nothing, every other leaf 2 s: natively those
    # leaves run while item 0 sleeps, behind the barrier they run after it (not in the default set)
    "barrier": lambda: flows.nested(4, 4, skew_s=4.0, leaf_s=2.0, fast_slow_item=True),
}
DEFAULT_SHAPES = "linear,foreach16,nested4x4"
# the jobs of benchmarks/bare_jobs.py, by shape
BARE_JOBS = {"linear": "linear10", "foreach16": "foreach16", "nested4x4": "nested4x4"}
BARE_FILE = str(Path(__file__).resolve().parent / "bare_jobs.py")


def succeeded(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The finished command (its output captured); a failure ends the benchmark, showing why."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return proc


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    succeeded(cmd, cwd, env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--no-execute", action="store_true", help="skip `dagster job execute`")
    ap.add_argument("--bare", action="store_true", help="also time the shape as a plain Dagster job of no-op ops")
    args = ap.parse_args()
    dagster_cli = str(Path(sys.executable).parent / "dagster")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dm-bench-trigger-") as tmp:
        root = Path(tmp)
        env = flows.bench_env(root)
        py = sys.executable
        for shape in [s for s in args.shapes.split(",") if s]:
            name, source = SHAPES[shape]()
            flow = root / f"{name.lower()}.py"
            flow.write_text(source)
            out = f"{name.lower()}_dagster.py"
            timed([py, flow.name, "dagster", "create", out], root, env)
            times: dict[str, list[float]] = {"native": [], "trigger": [], "execute": [], "bare": [], "one_op": []}
            bare_job = BARE_JOBS.get(shape) if args.bare else None
            for i in range(args.repeat):
                times["native"].append(timed([py, flow.name, "run"], root, env))
                times["trigger"].append(timed([py, flow.name, "dagster", "trigger", "--wait"], root, env))
                if not args.no_execute:
                    times["execute"].append(timed([dagster_cli, "job", "execute", "-f", out, "-j", name], root, env))
                if bare_job:
                    pair = [("bare", bare_job), ("one_op", "one_op")]
                    for key, job in pair if i % 2 == 0 else pair[::-1]:  # alternate their order
                        times[key].append(timed([dagster_cli, "job", "execute", "-f", BARE_FILE, "-j", job], root, env))
            med = {k: statistics.median(v) for k, v in times.items() if v}
            rows.append((shape, med))
            print(
                f"{shape}: "
                + "  ".join(f"{k} {v:.2f}s ({v / med['native']:.2f}x) [{', '.join(f'{t:.2f}' for t in times[k])}]" for k, v in med.items()),
                flush=True,
            )
    with_bare = any("bare" in med for _, med in rows)
    head = " no-op Dagster job, same shape | ratio | one no-op op | ratio |" if with_bare else ""
    print(f"\n| flow | native `flow.py run` | `dagster trigger --wait` | ratio | `dagster job execute` | ratio |{head}")
    print("|---|---|---|---|---|---|" + ("---|---|---|---|" if with_bare else ""))
    for shape, med in rows:
        n = med["native"]
        cells = [f"{med[k]:.2f}s | {med[k] / n:.2f}x" if k in med else "– | –" for k in ("execute", "bare", "one_op")]
        print(f"| {shape} | {n:.2f}s | {med['trigger']:.2f}s | {med['trigger'] / n:.2f}x | " + " | ".join(cells[: 1 + 2 * with_bare]) + " |")


if __name__ == "__main__":
    main()
