"""One attempt of one task: its `flow.py step` (or `dagster launch-step`) process run under
supervision, with @timeout's backstop, the runtime's share of its logs, and the failure a
Dagster op shows when it did not succeed."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from dagster import Failure, MetadataValue, OpExecutionContext

from ..task_options import StepOptions, TaskOptions
from .command import StepCommand
from .process import announce, dagster_env, supervise_step
from .settings import FlowSettings
from .supervise import ProcessResult, StepInterrupted
from .taskmeta import TaskMetadata
from .taskstore import MflogBuffer, TaskStore

TIMEOUT_BACKSTOP = 5  # seconds after @timeout's deadline before the runtime kills the step
METAFLOW_EXIT_DISALLOW_RETRY = 202  # metaflow.exception: a task exit the runtime never retries


@dataclass
class _Logs:
    """The task's streams as the runtime saw them, kept in Metaflow's log format."""

    stdout: MflogBuffer = field(default_factory=MflogBuffer)
    stderr: MflogBuffer = field(default_factory=MflogBuffer)

    def keep(self, stream: str, line: bytes) -> None:
        (self.stdout if stream == "stdout" else self.stderr).add(line)


class Attempts:
    """Runs task attempts of one flow."""

    def __init__(
        self, settings: FlowSettings, store: TaskStore, command: StepCommand, meta: TaskMetadata
    ) -> None:
        self.settings = settings
        self.store = store
        self.command = command
        self.meta = meta

    def run(
        self, context: OpExecutionContext, task: TaskOptions, options: StepOptions
    ) -> ProcessResult:
        """Run one attempt to its end; raise the op's Failure when the task did not succeed."""
        argv = self.command.step_argv(task)
        env = self.command.step_env(options.extra_env)
        env["METAFLOW_RUN_ID"] = task.run_id
        env.update(dagster_env(context))
        if task.launcher:
            env = self.command.launcher_env(env)
        # announced in the step's own compute log, not as an event
        announce(
            f"[dagster-metaflow] running Metaflow task {self.settings.name}/{task.pathspec}{_retry(task)}\n"
        )
        logs = _Logs()
        result = self._supervised(context, task, argv, env, logs, options.timeout)
        timeout = options.timeout
        # a failure at the deadline is a timeout, whichever side ended it
        timed_out = result.timed_out or (
            timeout is not None and result.returncode != 0 and result.duration >= timeout - 0.5
        )
        if timed_out:
            logs.keep("stderr", f"Task timed out after {timeout} seconds (@timeout).\n".encode())
        elif result.returncode != 0:
            # what the native runtime writes into the task's log for a failed process
            crash = result.returncode == -signal.SIGSEGV
            logs.keep(
                "stderr",
                b"Task failed with a segmentation fault.\n" if crash else b"Task failed.\n",
            )
        if result.timed_out:
            self.store.record_backstop_timeout(task.pathspec, task.retry_count, timeout)
        self.store.save_logs(task.pathspec, task.retry_count, logs.stdout, logs.stderr)
        failure = self._failure(task, result, timed_out, timeout)
        if failure is not None:
            raise failure
        return result

    def _supervised(
        self,
        context: OpExecutionContext,
        task: TaskOptions,
        argv: list[str],
        env: dict[str, str],
        logs: _Logs,
        timeout: int | None,
    ) -> ProcessResult:
        """The attempt's process, its lines kept; a launched task is never forked.

        Metaflow's own @timeout handler ends the task at the deadline and records it as
        natively (TimeoutException, attempt done and not ok); ours is the backstop that
        guarantees the deadline and leaves no survivors."""
        backstop = None if timeout is None else timeout + TIMEOUT_BACKSTOP
        try:
            return supervise_step(
                context,
                argv,
                env,
                self.command.cwd,
                timeout=backstop,
                on_line=logs.keep,
                fork=not task.launcher,
            )
        except BaseException as exc:
            logs.keep("stderr", f"Task interrupted: {str(exc) or type(exc).__name__}\n".encode())
            self.store.save_logs(task.pathspec, task.retry_count, logs.stdout, logs.stderr)
            if isinstance(exc, StepInterrupted):
                from dagster import DagsterExecutionInterruptedError

                raise DagsterExecutionInterruptedError(
                    f"step {task.step!r} stopped: {exc}"
                ) from None
            raise

    def _failure(
        self, task: TaskOptions, result: ProcessResult, timed_out: bool, timeout: int | None
    ) -> Failure | None:
        """The op's failure for an attempt that did not succeed (None when it did)."""
        if task.launcher and result.returncode != 0:
            from .native import LAUNCH_ERROR_PREFIX

            launch_failed = [ln for ln in result.stderr_tail if ln.startswith(LAUNCH_ERROR_PREFIX)]
            if launch_failed:  # the task never started: Metaflow's one line says why
                return Failure(
                    description=launch_failed[-1][len(LAUNCH_ERROR_PREFIX) :],
                    metadata={"pathspec": self.meta.pathspec_value(task.pathspec)},
                    allow_retries=False,
                )
        if not timed_out and result.returncode == 0:
            return None
        why = (
            f"timed out after {timeout}s (@timeout); its process group was terminated"
            if timed_out
            else f"exited with code {result.returncode}"
        )
        tail = "\n".join(result.stderr_tail) or "(no stderr output)"
        user_error = self.store.user_error(task.pathspec, task.retry_count)
        return Failure(
            description=f"Metaflow step {task.step!r} (task {task.pathspec}){_retry(task)} {why}.\n"
            + (f"{user_error}\n" if user_error else "")
            + f"Last lines of stderr:\n{tail}",
            metadata={
                "pathspec": self.meta.pathspec_value(task.pathspec),
                "retry_count": MetadataValue.int(task.retry_count),
                "returncode": MetadataValue.int(result.returncode),
            },
            # Metaflow's "do not retry" exit (e.g. a remote task that could not be
            # launched, or was killed), honoured as its runtime does
            allow_retries=result.returncode != METAFLOW_EXIT_DISALLOW_RETRY,
        )


def _retry(task: TaskOptions) -> str:
    return f" (retry {task.retry_count})" if task.retry_count else ""
