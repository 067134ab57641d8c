"""Preparing a Metaflow run for a Dagster run: its id and tags, its parameters (`flow.py
init`), and for a re-execution or resume the tasks cloned from the origin run
(`flow.py step --clone-only`, as `flow.py resume` clones)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dagster import Failure, OpExecutionContext

from .command import StepCommand
from .ids import (
    PARAMS_STEP,
    PARAMS_TASK_ID,
    indices_of,
    metaflow_run_id,
    params_pathspec,
    start_op_config,
)
from .process import announce, supervise_step
from .resume import OncePerRun, Origin, executed_tasks, origin_of
from .settings import FlowSettings
from .taskstore import TaskStore

TAG_PATHSPEC = "metaflow/pathspec"  # on the Dagster run: its Metaflow run
# on a run of another job holding the flow's ops (Dagster's implicit `__ASSET_JOB`, which
# "Materialize" may launch): whose deployment's run it is, for list-runs and status
TAG_DEPLOYMENT = "dagster-metaflow/deployment"
CLONE_WORKERS = 8
_PREPARE = OncePerRun()


class RunPreparation:
    """What happens to a flow's Metaflow run before (and besides) its tasks run."""

    def __init__(self, settings: FlowSettings, store: TaskStore, command: StepCommand) -> None:
        self.settings = settings
        self.store = store
        self.command = command

    def run_id(self, context: OpExecutionContext) -> str:
        """The Metaflow run of this Dagster run; prepares it once per process (tags, and for a
        Dagster re-execution the new Metaflow run with the reused tasks cloned)."""
        run_id = metaflow_run_id(context.run_id)
        self.command.resolve_code(context)
        _PREPARE.once(context.run_id, lambda: self._prepare_run(context, run_id))
        return run_id

    def run_tags(self, context: OpExecutionContext, tags: Sequence[str]) -> list[str]:
        """The flow's tags; a production deployment adds the deployer as `user:` (the identity
        system tag is `production:<token>` there; a user deployment has `user:` as its own).
        The Dagster run is recorded as task metadata (`dagster_internal`), not as a tag."""
        s = self.settings
        extra = [f"user:{s.owner}"] if s.owner and s.production_token else []
        return [*tags, *(t for t in extra if t not in tags)]

    def _prepare_run(self, context: OpExecutionContext, run_id: str) -> None:
        self.command.check_flow_unchanged()
        s = self.settings
        tags = {TAG_PATHSPEC: f"{s.name}/{run_id}"}
        if s.job_name and context.job_name != s.job_name:
            tags.update({TAG_DEPLOYMENT: s.job_name, "metaflow/flow": s.name})
        try:
            missing = {k: v for k, v in tags.items() if context.run.tags.get(k) != v}
            if missing:
                context.instance.add_run_tags(context.run_id, missing)
        except Exception:
            pass
        origin = origin_of(context)
        if origin is not None and origin.reexecution:
            self._prepare_reexecution(context, run_id, origin)

    def init_run(
        self, context: OpExecutionContext, run_id: str, config: Any, tags: Sequence[str] = ()
    ) -> str:
        """Persist the run's parameters once (`flow.py init`); returns the _parameters pathspec.

        Idempotent: a retried start op finds the finished _parameters task and reuses it.
        """
        pathspec = params_pathspec(run_id)
        if self.store.succeeded(pathspec):
            context.log.info(f"Parameters of run {run_id} already persisted; reusing them")
            return pathspec
        return self.persist_parameters(context, run_id, self.parameter_env(config), tags)

    def persist_parameters(
        self,
        context: OpExecutionContext,
        run_id: str,
        parameters: Mapping[str, str | None],
        tags: Sequence[str] | None = None,
    ) -> str:
        """`flow.py init`: register the run and persist its parameters (METAFLOW_INIT_*)."""
        argv = [*self.command.base_argv(), "init", "--run-id", run_id, "--task-id", PARAMS_TASK_ID]
        for tag in self.run_tags(context, self.settings.tags if tags is None else tags):
            argv += ["--tag", tag]
        env = self.command.step_env({k: v for k, v in parameters.items() if v is not None})
        result = supervise_step(context, argv, env, self.command.cwd, timeout=None)
        if result.returncode != 0:
            raise Failure(
                description=f"Metaflow could not initialise run {run_id} (flow.py init "
                f"exited with {result.returncode}):\n" + "\n".join(result.stderr_tail[-20:]),
            )
        return params_pathspec(run_id)

    def parameter_env(self, config: Any) -> dict[str, str | None]:
        """METAFLOW_INIT_* values from the op's Config (None: keep the flow's default)."""
        out: dict[str, str | None] = {}
        for field_name, env_var, typ in self.settings.parameters:
            value = getattr(config, field_name, None) if config is not None else None
            out[env_var] = _param_text(value, typ)
        return out

    def parameter_env_from_run_config(self, run_config: Mapping[str, Any]) -> dict[str, str | None]:
        """METAFLOW_INIT_* values from a run config (a re-execution runs no start op)."""
        values = start_op_config(run_config)
        out: dict[str, str | None] = {}
        for field_name, env_var, typ in self.settings.parameters:
            alias = env_var[len("METAFLOW_INIT_") :].lower()
            value = values.get(field_name)
            if value is None:
                value = next(
                    (v for k, v in values.items() if k.lower().replace("-", "_") == alias), None
                )
            out[env_var] = _param_text(value, typ)
        return out

    def clone_task(
        self, context: OpExecutionContext, source: str, target: str, tags: Sequence[str] = ()
    ) -> None:
        """Clone task `source` (run/step/task) as `target` with Metaflow's `step --clone-only`."""
        if self.store.succeeded(target):
            return
        run_id, step, task_id = target.split("/")
        argv = [*self.command.base_argv(), "step", step, "--run-id", run_id, "--task-id", task_id]
        argv += [
            "--clone-only",
            source,
            "--clone-run-id",
            source.split("/")[0],
            "--retry-count",
            "0",
        ]
        for tag in tags:
            argv += ["--tag", tag]
        announce(
            f"[dagster-metaflow] cloning Metaflow task {self.settings.name}/{source} as {target}\n"
        )
        result = supervise_step(
            context, argv, self.command.step_env(), self.command.cwd, timeout=None
        )
        if result.returncode != 0:
            raise Failure(
                description=f"Metaflow could not clone task {source} into {target} (exit "
                f"{result.returncode}):\n" + "\n".join(result.stderr_tail[-20:])
            )

    def _prepare_reexecution(
        self, context: OpExecutionContext, run_id: str, origin: Origin
    ) -> None:
        """Create the new Metaflow run of a Dagster re-execution: parameters, then clones of
        every task of the parent run that this run does not execute."""
        if not self.store.succeeded(params_pathspec(run_id)):
            self.persist_parameters(
                context, run_id, self.parameter_env_from_run_config(context.run_config)
            )
        whole, single = executed_tasks(context)
        to_clone = []
        for ds in self.store.origin_tasks(origin.run_id):
            _, step, task_id = ds.pathspec.split("/")
            if step == PARAMS_STEP or step in whole or (step, indices_of(task_id)) in single:
                continue
            if not ds.get("_task_ok", False):
                continue
            target = f"{run_id}/{step}/{task_id}"
            if not self.store.succeeded(target):
                to_clone.append((ds.pathspec, target))
        if not to_clone:
            return
        context.log.info(
            f"Re-execution: cloning {len(to_clone)} task(s) of Metaflow run {origin.run_id} into {run_id}"
        )
        tags = self.run_tags(context, self.settings.tags)
        _parallel(lambda pair: self.clone_task(context, pair[0], pair[1], tags=tags), to_clone)


def _param_text(value: Any, typ: str) -> str | None:
    """Render a Config value as the text `flow.py init` parses for that parameter type."""
    if value is None:
        return None
    if typ == "bool":
        return "true" if value else "false"
    if typ == "json" and not isinstance(value, str):
        import json

        return json.dumps(value)
    return str(value)


def _parallel(fn: Callable[[Any], None], items: Iterable[Any]) -> None:
    with ThreadPoolExecutor(max_workers=CLONE_WORKERS) as pool:
        for fut in [pool.submit(fn, item) for item in items]:
            fut.result()
