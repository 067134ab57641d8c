"""`make demo`: compile examples/demo_flow.py, run it under Dagster, show what it produced.

Uses an embedded Dagster instance on SQLite in ./.dagster_home and Metaflow's local
datastore in ./examples/.metaflow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HOME = ROOT / ".dagster_home"
BIN = Path(sys.executable).parent


def sh(*cmd: str, **kw: object) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def main() -> None:
    env = dict(os.environ)
    env.setdefault("USER", "demo")
    env["PYTHONWARNINGS"] = "ignore"
    env["DAGSTER_HOME"] = str(HOME)
    env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(EXAMPLES)
    HOME.mkdir(exist_ok=True)
    (HOME / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (EXAMPLES / ".metaflow").mkdir(exist_ok=True)
    out = EXAMPLES / "demoflow_dagster.py"

    print("\n== 1. Compile the Metaflow flow into a Dagster definitions file")
    sh(sys.executable, "demo_flow.py", "dagster", "create", out.name, cwd=EXAMPLES, env=env)

    print("\n== 2. Trigger a run on the Dagster instance (SQLite in .dagster_home) and follow it")
    sh(sys.executable, "demo_flow.py", "dagster", "trigger", "--epochs", "25", "--wait",
       cwd=EXAMPLES, env=env)

    print("\n== 3. What the run produced, read back through the Metaflow client (new artifacts per task)")
    os.environ.update(env)
    from dagster import DagsterInstance
    from metaflow import Run, namespace

    from dagster_metaflow.runtime import metaflow_run_id

    with DagsterInstance.get() as instance:
        dagster_run = instance.get_runs(limit=1)[0]
    namespace(None)
    run = Run(f"DemoFlow/{metaflow_run_id(dagster_run.run_id)}")
    print(f"Dagster run {dagster_run.run_id}: {dagster_run.status.value}")
    print(f"Metaflow run {run.pathspec}: successful={run.successful}")
    seen: set[str] = set()
    for step in reversed(list(run.steps())):  # the client lists steps newest first
        tasks = sorted(step.tasks(), key=lambda t: t.index or 0)
        new = set()
        for task in tasks:
            arts = {a.id: a.data for a in task.artifacts if not a.id.startswith("_") and a.id != "name"}
            shown = ", ".join(f"{k}={v!r}" for k, v in sorted(arts.items()) if k not in seen)
            new |= arts.keys()
            print(f"  {task.pathspec:<45} {shown or '(no new artifacts)'}")
        seen |= new
    print(f"\nOpen the UI with:  DAGSTER_HOME={HOME} {BIN / 'dagster'} dev -f {out}")


if __name__ == "__main__":
    main()
