"""The run worker our launcher starts: `python -m dagster_metaflow.run_worker execute_run|resume_run
ARGS`, what `dagster api execute_run` / `resume_run` run, forked from the worker zygote or
spawned (`DAGSTER_METAFLOW_FORK=0`), and what `trigger`'s forked worker runs.

The same body as Dagster's (`_execute_run_command_body` / `_resume_run_command_body`), the
instance opened as Dagster's CLI opens it (a `.env` in the working directory included),
interrupts captured the same way. Left out: Dagster's CLI keeps every event of the run
serialized in a list nobody reads, in memory until the worker exits (~1.1 KB per event,
~5 events per task of a foreach run one op per task); and its command-line parsing."""

from __future__ import annotations

import sys
from typing import Any

COMMANDS = ("execute_run", "resume_run")


def run_worker_body(ref: Any, run_id: str, resume: bool = False, fail_code: bool = False) -> int:
    """Run (or resume) run `run_id` of the instance `ref` in this process; its exit code."""
    from ._dagster_private import (
        capture_interrupts,
        execute_run_body,
        get_instance_for_cli,
        resume_run_body,
    )

    body = resume_run_body if resume else execute_run_body
    with capture_interrupts():
        with get_instance_for_cli(instance_ref=ref) as instance:
            return body(run_id, instance, lambda _event: None, set_exit_code_on_failure=fail_code)


def main(argv: list[str]) -> int:
    """`execute_run|resume_run ARGS` (ARGS: Dagster's serialized ExecuteRunArgs/ResumeRunArgs)."""
    from dagster import deserialize_value

    from ._dagster_private import ExecuteRunArgs, ResumeRunArgs

    if len(argv) != 2 or argv[0] not in COMMANDS:
        print(f"usage: python -m dagster_metaflow.run_worker {'|'.join(COMMANDS)} ARGS", file=sys.stderr)
        return 2
    resume = argv[0] == "resume_run"
    args: Any = deserialize_value(argv[1], ResumeRunArgs if resume else ExecuteRunArgs)
    fail_code = bool(getattr(args, "set_exit_code_on_failure", None))
    return run_worker_body(args.instance_ref, args.run_id, resume, fail_code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
