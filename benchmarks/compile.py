"""What compiling costs: `create` against importing Metaflow, the generated file against
importing Dagster.

    python benchmarks/compile.py [--repeat 3]

Flows: a generated 200-step linear flow and a 50-step flow with 10 nested foreach levels.
For each it times (median of --repeat runs, alternating):
  `python -c "pass"`                       the interpreter's start (in every baseline)
  `python -c "import metaflow"`            the baseline `create` is measured against
  `python flow.py dagster create out.py`   compile, load check, package, record
  `python -c "import dagster"`             the baseline the generated file is measured against
  `python -c "<open the instance>"`        Dagster's floor of `create`: importing Dagster and
                                            opening its instance as `create` does (SQLAlchemy,
                                            alembic, storages), needed to record the deployment
  `python out.py` (imports the definitions) the generated file
  the generated file imported by a process that imported Dagster (the clock read inside it,
                                            as a code server or `dagster dev` loads it: no
                                            interpreter start and no teardown of the larger heap
                                            the definitions leave, which the whole command pays)
Nothing else should run meanwhile.
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
from trigger import succeeded, timed  # noqa: E402

# what `create` cannot do without: Dagster imported and its instance opened (one read), as
# `create` opens it (plain Dagster's open reads its ~90 migration scripts at every storage),
# and left as `create` leaves it: without the interpreter's teardown collecting the heap
# Dagster built (~0.6 s here; our commands freeze it: runtime/heap.py)
OPEN_INSTANCE = """
import os
from dagster_metaflow._dagster_sqlite import keep_sqlite_connections, remember_alembic_heads
from dagster_metaflow.deployments import open_instance
remember_alembic_heads()
keep_sqlite_connections()
with open_instance() as instance:
    instance.get_runs(limit=1)
os._exit(0)
"""

# the generated file's own import: the time from `import dagster` done to the definitions
# built, read inside the process (its teardown, ~0.3 s of `python out.py`, is no import)
IMPORT_INSIDE = """
import os, runpy, sys, time
import dagster
t = time.perf_counter()
runpy.run_path(sys.argv[1])
print(time.perf_counter() - t)
os._exit(0)
"""

FLOWS = {
    "linear 200 steps": lambda: flows.linear(200),
    "50 steps, 10 nested foreach levels": lambda: flows.deep_nested(10, 50),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="dm-bench-compile-") as tmp:
        root = Path(tmp)
        env = flows.bench_env(root)
        for label, make in FLOWS.items():
            name, source = make()
            flow = root / f"{name.lower()}.py"
            flow.write_text(source)
            out = f"{name.lower()}_dagster.py"
            kinds = ("python", "metaflow", "create", "instance", "dagster", "generated", "inside")
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.repeat):
                times["python"].append(timed([py, "-c", "pass"], root, env))
                times["metaflow"].append(timed([py, "-c", "import metaflow"], root, env))
                times["create"].append(timed([py, flow.name, "dagster", "create", out], root, env))
                times["instance"].append(timed([py, "-c", OPEN_INSTANCE], root, env))
                times["dagster"].append(timed([py, "-c", "import dagster"], root, env))
                times["generated"].append(timed([py, out], root, env))
                times["inside"].append(float(succeeded([py, "-c", IMPORT_INSIDE, out], root, env).stdout))
            m = {k: statistics.median(v) for k, v in times.items()}
            beyond = m["create"] - m["metaflow"]
            # the interpreter's start is in the baseline already; modules both Metaflow and
            # Dagster import count in both baselines, so beyond - floor is no measure of ours
            floor = m["instance"] - m["python"]
            print(
                f"{label}: create {m['create']:.2f}s = import metaflow {m['metaflow']:.2f}s "
                f"+ {beyond:.2f}s (importing Dagster and opening its instance alone: "
                f"{floor:.2f}s); generated file "
                f"{m['generated']:.2f}s = import dagster {m['dagster']:.2f}s + "
                f"{m['generated'] - m['dagster']:.2f}s (imported by a process that imported "
                f"Dagster: {m['inside']:.2f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
