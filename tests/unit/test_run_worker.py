"""The run worker's entry point refuses what it cannot run, in one line."""

from __future__ import annotations

import subprocess
import sys


def test_an_unknown_command_is_a_usage_error_naming_the_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dagster_metaflow.run_worker", "launch_run", "{}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "usage: python -m dagster_metaflow.run_worker execute_run|resume_run ARGS"
