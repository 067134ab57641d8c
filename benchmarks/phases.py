"""Where a `dagster job execute` of a small flow spends its time, against native `flow.py run`.

    python benchmarks/phases.py [--repeat N] [--shape linear]   (any of trigger.py's shapes)

For each of --repeat rounds it runs, alternating: native `python flow.py run`, `dagster job
execute -f <compiled> -j <job>` as a user types it, and the same command under
`_phase_probe.py`, which timestamps the moments below (functions of Dagster and of our
runtime wrapped in place; times from the command's start; the plain and the probed command
take turns going first).

It prints the median time of each moment (from the command's start) and the median, over the
rounds, of each span between two moments of the same run; the two commands' medians and
ratios; and the probed command's total beside the plain one's (what the probe costs).
Moments (Dagster's main path, then the step zygote, started from a thread of ours while the
definitions file loads): Dagster's CLI imported; instance loaded (`DagsterInstance.get`: its
storages' imports); definitions file loaded (the generated file); run created; run
execution started; step zygote started / ready (a fresh interpreter importing Metaflow);
`flow.py init` started (the start op persisting the parameters); first step started; last
step ended; run ended; process exiting; command over (the parent's clock). A moment a run
lacks (`DAGSTER_METAFLOW_FORK=0` has no zygote) is counted as missing, never guessed.
Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flows  # noqa: E402
from trigger import SHAPES, timed  # noqa: E402

PROBE = Path(__file__).resolve().parent / "_phase_probe.py"


def probed(cmd: list[str], cwd: Path, env: dict[str, str], out: Path) -> dict[str, float]:
    """The marks of one probed command, and when the command was over for its parent."""
    out.unlink(missing_ok=True)
    t0 = time.time()  # the probe's marks count from here (epoch: another process reads it)
    timed([sys.executable, str(PROBE), str(out), repr(t0), *cmd], cwd, env)
    over = time.time() - t0
    marks: dict[str, float] = json.loads(out.read_text())
    marks["command over"] = over
    return marks


def main() -> None:
    """Alternate native, plain and probed commands --repeat times; report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shape", default="linear", choices=sorted(SHAPES))
    args = ap.parse_args()
    dagster_cli = str(Path(sys.executable).parent / "dagster")
    with tempfile.TemporaryDirectory(prefix="dm-bench-phases-") as tmp:
        root = Path(tmp)
        env = flows.bench_env(root)
        py = sys.executable
        name, source = SHAPES[args.shape]()
        flow = root / f"{name.lower()}.py"
        flow.write_text(source)
        compiled = f"{name.lower()}_dagster.py"
        timed([py, flow.name, "dagster", "create", compiled], root, env)
        execute = [dagster_cli, "job", "execute", "-f", compiled, "-j", name]
        native: list[float] = []
        plain: list[float] = []
        runs: list[dict[str, float]] = []
        for i in range(args.repeat):
            native.append(timed([py, flow.name, "run"], root, env))
            if i % 2:  # take turns: neither always runs right after native
                runs.append(probed(execute, root, env, root / "marks.json"))
                plain.append(timed(execute, root, env))
            else:
                plain.append(timed(execute, root, env))
                runs.append(probed(execute, root, env, root / "marks.json"))
            print(f"round {i + 1}: native {native[-1]:.2f}s, job execute {plain[-1]:.2f}s, "
                  f"probed {runs[-1]['command over']:.2f}s", flush=True)
    report(args.shape, native, plain, runs)


MOMENTS = (
    "Python started",
    "Dagster's CLI imported",
    "instance loaded",
    "step zygote started",
    "definitions file loaded",
    "run created",
    "run execution started",
    "step zygote ready",
    "`flow.py init` started",
    "first step started",
    "last step ended",
    "run ended",
    "process exiting",
    "command over",
)
# (span, from moment, to moment): each the median over the rounds of that run's difference
SPANS = (
    ("Dagster's CLI import (Python's start included)", None, "Dagster's CLI imported"),
    ("Dagster's instance (its storages' imports)", "Dagster's CLI imported", "instance loaded"),
    ("the definitions file (the generated file)", "instance loaded", "definitions file loaded"),
    ("run created", "definitions file loaded", "run created"),
    ("the step zygote's start (Metaflow imported in it)", "step zygote started", "step zygote ready"),
    ("run execution started -> `flow.py init` started", "run execution started", "`flow.py init` started"),
    ("`flow.py init` (the start op's parameters)", "`flow.py init` started", "first step started"),
    ("the steps (first started -> last ended)", "first step started", "last step ended"),
    ("run end (last step -> run ended)", "last step ended", "run ended"),
    ("exit (run ended -> command over)", "run ended", "command over"),
)


def report(shape: str, native: list[float], plain: list[float], runs: list[dict[str, float]]) -> None:
    """The moments' medians, the spans' medians of per-run differences, and the totals."""
    n, p = statistics.median(native), statistics.median(plain)
    over = statistics.median(r["command over"] for r in runs)
    print(f"\n{shape}: native `flow.py run` {n:.2f}s; `dagster job execute` {p:.2f}s ({p / n:.2f}x); "
          f"probed {over:.2f}s (the probe's own cost: {over - p:+.2f}s)\n")
    print("| moment | at (median) | runs |")
    print("|---|---|---|")
    for k in MOMENTS:
        have = [r[k] for r in runs if k in r]
        at = f"{statistics.median(have):.3f}s" if have else "–"
        print(f"| {k} | {at} | {len(have)} of {len(runs)} |")
    print("\n| span | median | runs |")
    print("|---|---|---|")
    for label, a, b in SPANS:
        diffs = [r[b] - (r[a] if a else 0.0) for r in runs if b in r and (a is None or a in r)]
        med = f"{statistics.median(diffs):.3f}s" if diffs else "–"
        print(f"| {label} | {med} | {len(diffs)} of {len(runs)} |")


if __name__ == "__main__":
    main()
