"""Run a representative test subset against chosen Metaflow and Dagster versions.

    python3.11 tests/compat/run_compat.py [--workdir DIR] [--fresh] [--unit-only]
                                          [--without-libraries] [COMBO ...]

COMBO is METAFLOW:DAGSTER, e.g. `2.19.39:1.13.27`; dagster-webserver is installed at the
Dagster version, the Dagster libraries (dagster-celery, -k8s, -postgres) at the matching
library version (1.13.27: 0.29.27), or not at all with --without-libraries (a Dagster
release whose libraries are not published yet), which also leaves out the tests needing them.
Default: the lowest and the highest supported version of each (LOW, HIGH).
Each combo gets its own venv under --workdir (reused unless --fresh) with those versions
pinned, the other requirements of pyproject.toml, and this checkout installed editable
without dependencies, so versions outside the declared ranges can be tried too (with
DAGSTER_METAFLOW_SKIP_VERSION_CHECK=1 for a Dagster outside the range). It runs
`tests/unit` plus E2E below, one combo after the other (-n 1: the suite is not the point),
and prints one row per combo. Logs: <workdir>/<combo>.log. Exit status 1 if any combo failed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# (metaflow, dagster): keep in step with pyproject.toml and dagster_metaflow/_dagster_private.py
LOW = ("2.19.36", "1.11.10")
HIGH = ("2.19.39", "1.13.27")
# test_ui reads the graph through CSS-module class names dagster-webserver has from 1.13.5
UI_TEST_MIN = (1, 13, 5)
UI_TEST = "tests/e2e/test_ui.py"

# one of each path that touches Metaflow internals, a private Dagster API or a Dagster
# library: the thread executor (linear, foreach, retry), trigger/resume/terminate through the
# instance, `dagster dev` (webserver, code server), the daemon (schedule, sensors, stop on
# delete), Celery workers, a Postgres instance, the S3 datastore and k8s executor, the UI
E2E = [
    "tests/e2e/test_runs.py::test_linear_and_definitions_validate",
    "tests/e2e/test_runs.py::test_foreach_and_split_match_native",
    "tests/e2e/test_runs.py::test_retry_then_success",
    "tests/e2e/test_deploy.py::test_trigger_typed_parameters_status_and_attribution",
    "tests/e2e/test_deploy.py::test_resume_clones_successful_tasks_and_leaves_origin_alone",
    "tests/e2e/test_deploy.py::test_terminate_stops_every_step_process",
    "tests/e2e/test_lifecycle.py::test_dagster_dev_launch_and_terminate",
    "tests/e2e/test_automation.py::test_daemon_runs_schedules_events_and_upstream_finishes",
    UI_TEST,
]
NEED_LIBRARIES = [
    "tests/e2e/test_engines.py::test_celery_workers_share_a_foreach_and_match_native",
    "tests/e2e/test_postgres.py",
    "tests/e2e/test_s3.py",  # dagster-k8s
]
UNIT_NEEDING_LIBRARIES = ["tests/unit/test_codegen.py::test_generated_definitions_load_in_dagster[linear_celery]"]
PINNED = {"metaflow", "dagster", "dagster-webserver"}
NOT_NEEDED = {"ruff", "mypy"}  # lint runs once, in the project's own venv


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()


def library_version(dagster: str) -> str:
    """The version of the Dagster libraries released with this Dagster: 1.13.28 -> 0.29.28."""
    major, minor, patch = dagster.split(".")[:3]
    assert major == "1", f"no library version rule for dagster {dagster}"
    return f"0.{int(minor) + 16}.{patch}"


def requirements(metaflow: str, dagster: str, libraries: bool = True) -> list[str]:
    """pyproject's dependencies and test extra, with the versions of the combo pinned."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = [f"metaflow=={metaflow}", f"dagster=={dagster}", f"dagster-webserver=={dagster}"]
    for req in project["dependencies"] + project["optional-dependencies"]["test"]:
        name = _name(req)
        if name in PINNED | NOT_NEEDED or (name.startswith("dagster-") and not libraries):
            continue
        out.append(f"{name}=={library_version(dagster)}" if name.startswith("dagster-") else req)
    return out


def _default_signals() -> None:
    # a shell's `cmd &` starts it with SIGINT and SIGQUIT ignored, which its children
    # inherit; the supervision tests need the default dispositions
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _run(cmd: list[str], log: Path, **kw: Any) -> int:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        return subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, check=False, preexec_fn=_default_signals, **kw
        ).returncode


def run_combo(
    metaflow: str, dagster: str, workdir: Path, fresh: bool, tests: list[str], libraries: bool
) -> tuple[str, str]:
    """(status, detail) for one combo: install, then the test subset."""
    name = f"mf{metaflow}-dg{dagster}" + ("" if libraries else "-nolib")
    note = "" if libraries else "; without the Dagster libraries"
    if not libraries:
        tests = tests + [arg for t in UNIT_NEEDING_LIBRARIES for arg in ("--deselect", t)]
    if UI_TEST in tests and tuple(int(p) for p in dagster.split(".")[:3]) < UI_TEST_MIN:
        tests = [t for t in tests if t != UI_TEST]
        note += "; test_ui not run (webserver < 1.13.5)"
    venv, log = workdir / name, workdir / f"{name}.log"
    log.write_text(f"{name}\n")
    python = venv / "bin" / "python"
    if fresh or not python.exists():
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        if _run([sys.executable, "-m", "venv", str(venv)], log):
            return "error", "venv creation failed"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if _run([*pip, *requirements(metaflow, dagster, libraries)], log):
        return "install failed", f"see {log}"
    if _run([*pip, "--no-deps", "-e", str(REPO)], log):
        return "install failed", f"see {log}"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    _run([str(python), "-m", "pip", "list", "--format=freeze"], log, env=env)
    started = time.monotonic()
    code = _run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        log,
        cwd=REPO,
        env=env,
    )
    minutes = (time.monotonic() - started) / 60
    summary = [ln for ln in log.read_text().splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    detail = f"{summary[-1].strip('= ') if summary else 'no summary'} ({minutes:.1f} min){note}"
    return ("passed" if code == 0 else "FAILED"), detail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("combos", nargs="*", metavar="METAFLOW:DAGSTER")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dagster-metaflow-compat"))
    ap.add_argument("--fresh", action="store_true", help="recreate the venvs")
    ap.add_argument("--unit-only", action="store_true", help="tests/unit only (no e2e subset)")
    ap.add_argument(
        "--without-libraries", action="store_true", help="no dagster-celery/-k8s/-postgres, nor their tests"
    )
    args = ap.parse_args(argv)
    combos = [tuple(c.split(":", 1)) for c in args.combos] or [LOW, HIGH]
    if any(len(c) != 2 for c in combos):
        ap.error("a combo is METAFLOW:DAGSTER, e.g. 2.19.39:1.13.28")
    args.workdir.mkdir(parents=True, exist_ok=True)
    e2e = E2E + ([] if args.without_libraries else NEED_LIBRARIES)
    tests = ["tests/unit"] + ([] if args.unit_only else e2e)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    rows = []
    for metaflow, dagster in combos:
        print(f"python {py}, metaflow {metaflow}, dagster {dagster}: running...", flush=True)
        rows.append((metaflow, dagster, *run_combo(metaflow, dagster, args.workdir, args.fresh, tests, not args.without_libraries)))
    print("\n| python | metaflow | dagster (+webserver) | result | tests |\n|---|---|---|---|---|")
    for metaflow, dagster, status, detail in rows:
        print(f"| {py} | {metaflow} | {dagster} | {status} | {detail} |")
    return 0 if all(r[2] == "passed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
