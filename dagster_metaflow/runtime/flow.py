"""What a generated op calls: run one Metaflow task through the standard CLI.

`MetaflowFlow` holds the constants baked into the generated file (flow file, top-level
options, environment) and turns an op invocation into `python flow.py step ...`, supervised
by `supervise.run_supervised`, with Metaflow's own log persistence and datastore reads.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from dagster import DynamicOutput, Failure, MetadataValue, OpExecutionContext, Output

from .. import naming
from ..step_decorators import REMOTE_COMPUTE_DECORATORS
from .resume import OncePerRun, in_run, origin_of
from .supervise import StepControl, StepInterrupted, current_control, run_supervised
from .worker import RECOVERING_VAR
from .zygote import POOL, fork_enabled, spawn_step_process

PARAMS_STEP = "_parameters"
PARAMS_TASK_ID = "t-params"
MAX_LOG_BYTES = 100 * 1024 * 1024
TIMEOUT_BACKSTOP = 5  # seconds after @timeout's deadline before the runtime kills the step
TAG_PATHSPEC = "metaflow/pathspec"  # on the Dagster run: its Metaflow run
METAFLOW_EXIT_DISALLOW_RETRY = 202  # metaflow.exception: a task exit the runtime never retries
# Inside a foreach, a switch yields every output: the branch not taken gets "~<pathspec>",
# a marker that keeps the task's place (run/step/task id, hence its foreach index path), and
# every op on that branch passes a marker on without running a Metaflow task.
NOT_TAKEN = "~"


def not_taken(pathspec: str) -> str:
    return NOT_TAKEN + pathspec


def taken(value: str) -> bool:
    return bool(value) and not value.startswith(NOT_TAKEN)


def transition_error(step: str, actual: Sequence[str], expected: Sequence[str] | None, switch: bool) -> str | None:
    """Metaflow's message (runtime.py `_queue_tasks`, as its CLI prints it) when a task's
    `self.next()` named `actual` but the graph says `expected`; None when they agree or
    the graph is unknown (a file generated before transitions were recorded)."""
    if switch:
        if len(actual) != 1:
            return f"Switch step {step} should transition to exactly one step at runtime, but got: {', '.join(actual)}"
        if expected is not None and actual[0] not in expected:
            return (
                f"Switch step {step} transitioned to unexpected step {actual[0]}. "
                f"Expected one of: {', '.join(expected)}"
            )
        return None
    if expected is None or list(actual) == list(expected):
        return None
    return (
        f"Based on static analysis of the code, step {step} was expected to transition to step(s) "
        f"{', '.join(expected)}. However, when the code was executed, self.next() was called with "
        f"{', '.join(actual)}. Make sure there is only one unconditional self.next() call in the end of your step."
    )


_PREPARE = OncePerRun()
_CODE: dict[str, Mapping[str, str] | None] = {}  # flow fingerprint -> code package (per process)


_LIVE_FLOWS: list[MetaflowFlow] = []


def warm_up_flows() -> None:
    """Called by the executor when a run starts: prepare every flow defined in this process."""
    for flow in list(_LIVE_FLOWS):
        try:
            flow.warm_up()
        except Exception:
            pass


def metaflow_run_id(dagster_run_id: str) -> str:
    """Deterministic Metaflow run id for a Dagster run: every op and retry agrees on it."""
    return "dagster-" + dagster_run_id.replace("-", "")[:12]


task_id_for = naming.task_id_for


def is_ubf_control(pathspec: str) -> bool:
    """Whether a task id made by `task_id_for` is an unbounded foreach's control task."""
    step_and_place = pathspec.rsplit("/", 1)[-1].rsplit("-", 1)
    return len(step_and_place) == 2 and step_and_place[1] == naming.UBF


def indices_of(pathspec: str) -> tuple[int, ...]:
    """Foreach index path encoded in a task id made by `task_id_for`."""
    out = []
    for part in pathspec.rsplit("/", 1)[-1].split("-")[1:]:  # [0] is the step
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


class _MflogBuffer:
    """Collects a stream in Metaflow's mflog format, like the native runtime's TruncatedBuffer."""

    def __init__(self, maxsize: int = MAX_LOG_BYTES) -> None:
        self._buf = io.BytesIO()
        self._size = 0
        self._max = maxsize
        self._full = False
        self._lock = threading.Lock()

    def add(self, line: bytes) -> None:
        from metaflow.mflog import RUNTIME_LOG_SOURCE, mflog

        with self._lock:
            if self._full:
                return
            if mflog.is_structured(line):
                res = mflog.parse(line)
                if res is None or not res.should_persist:
                    return  # already persisted by the task itself
                data = mflog.unset_should_persist(line)
            else:
                data = mflog.decorate(RUNTIME_LOG_SOURCE, line, now=datetime.now(UTC).replace(tzinfo=None))
            if self._size + len(data) > self._max:
                data = mflog.decorate(RUNTIME_LOG_SOURCE, b"[TRUNCATED - MAXIMUM LOG FILE SIZE REACHED]\n")
                self._full = True
            self._buf.write(data)
            self._size += len(data)

    def getbuffer(self) -> io.BytesIO:
        self._buf.seek(0)
        return self._buf


@dataclass(frozen=True)
class MetaflowFlow:
    """Constants of one compiled flow plus the operations its ops perform."""

    name: str
    file: str
    top_level_args: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    namespace: str | None = None
    datastore_type: str = "local"
    datastore_root: str | None = None
    relative_to: str | None = None  # directory `file` is relative to (the generated file's)
    # (Config field, METAFLOW_INIT_* variable, type) for every flow Parameter
    parameters: tuple[tuple[str, str, str], ...] = ()
    owner: str | None = None  # the deploying user: `user:` of every run, steps' METAFLOW_USER
    production_token: str | None = None  # steps run in namespace production:<token>
    # the flow's configs as resolved at create (Metaflow's dump_config_values, JSON text)
    config_values: str | None = None
    # Metaflow code package ({"url", "sha", "metadata"}) steps run from; normally found in
    # the deployment record (`resolve_code`), which keeps generated files deterministic
    code_package: Mapping[str, str] | None = None
    flow_fingerprint: str | None = None  # sha256 of the compiled flow file
    # @exit_hook functions, run by the executor when the run ends
    exit_hooks_on_success: tuple[str, ...] = ()
    exit_hooks_on_error: tuple[str, ...] = ()
    job_name: str | None = None  # set when the executor must find this flow from its job
    card_steps: tuple[str, ...] = ()  # steps with @card: their ops link the cards
    # the graph's transitions (Metaflow's out_funcs) of every step, and its switch steps:
    # every finished task's `self.next()` is checked against them as Metaflow's runtime does
    transitions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    switch_steps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _LIVE_FLOWS.append(self)

    def warm_up(self) -> None:
        """Start the zygote this flow's steps will fork from (off the critical path)."""
        if fork_enabled():
            POOL.get(sys.executable, self.step_env())

    # -- paths and environment ---------------------------------------------------------
    @cached_property
    def source_path(self) -> str:
        """The flow file `create` compiled (it may have changed or gone since)."""
        p = Path(self.file)
        if not p.is_absolute() and self.relative_to:
            p = Path(self.relative_to) / p
        return str(p.resolve())

    @property
    def package(self) -> Mapping[str, str] | None:
        """The code package this process runs: given explicitly, or found by resolve_code."""
        return self.code_package or _CODE.get(self.flow_fingerprint or "")

    @property
    def flow_path(self) -> str:
        """The flow file steps run: the code package's copy when there is one."""
        package = self.package
        if not package:
            return self.source_path
        from .package import extracted

        root = extracted(self._flow_datastore, package)
        return os.path.join(root, os.path.basename(self.source_path))

    def resolve_code(self, context: OpExecutionContext) -> None:
        """Find the code package of this file's deployment (once per process): the record
        in the run's instance whose flow fingerprint is this file's."""
        key = self.flow_fingerprint or ""
        if self.code_package or not key or key in _CODE:
            return
        from ..deployments import get

        found = None
        try:
            dep = get(context.instance, context.job_def.name)
            if dep is not None and dep.flow_fingerprint == key and dep.code_package:
                found = dict(dep.code_package)
        except Exception as exc:
            context.log.warning(f"could not read the deployment record of {context.job_def.name}: {exc}")
        _CODE[key] = found

    @cached_property
    def cwd(self) -> str:
        """Steps run where the flow lives (relative paths as with `python flow.py run`), or
        in the package's directory if that is gone."""
        here = os.path.dirname(self.source_path)
        return here if os.path.isdir(here) else os.path.dirname(self.flow_path)

    def base_argv(self) -> list[str]:
        argv = [sys.executable, self.flow_path, *self.top_level_args]
        argv.append(f"--datastore={self.datastore_type}")
        if self.datastore_root:
            argv.append(f"--datastore-root={self.datastore_root}")
        if self.config_values:
            argv.append(f"--local-config-file={self.config_file}")
        return argv

    @cached_property
    def config_file(self) -> str:
        """The deployment's configs as a file Metaflow reads with --local-config-file."""
        assert self.config_values is not None
        return _content_file("configs", self.config_values)

    @cached_property
    def config_env(self) -> dict[str, str]:
        """METAFLOW_FLOW_CONFIG_VALUE naming every config as `kv.<name>`: read its value from
        the config file, never parse it again (what Metaflow's schedulers do)."""
        if not self.config_values:
            return {}
        import json

        names = sorted(json.loads(self.config_values).get("user_configs", {}))
        return {"METAFLOW_FLOW_CONFIG_VALUE": json.dumps({n: f"kv.{n}" for n in names})}

    def step_env(self, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.environment)
        if extra_env:
            env.update(extra_env)
        env.update(self.config_env)
        package = self.package
        if package:  # recorded as the tasks' code package, as Argo does
            env["METAFLOW_CODE_URL"] = package["url"]
            env["METAFLOW_CODE_SHA"] = package["sha"]
            env["METAFLOW_CODE_DS"] = self.datastore_type
            env["METAFLOW_CODE_METADATA"] = package.get("metadata", "")
        env["PYTHONUNBUFFERED"] = "x"
        # Metaflow starts some processes as plain `python` (@parallel workers): make that
        # the interpreter running this job, as an activated virtualenv would
        bindir = os.path.dirname(sys.executable)
        path = env.get("PATH", "")
        if path.split(os.pathsep)[0] != bindir:
            env["PATH"] = bindir + (os.pathsep + path if path else "")
        env["METAFLOW_RUNTIME_NAME"] = "dagster"  # system tag runtime:dagster
        if self.owner:
            # the deployer, as Metaflow's schedulers do; also makes USER=root work (Metaflow
            # ignores root when it looks for a user name)
            env["METAFLOW_USER"] = env["METAFLOW_OWNER"] = self.owner
        elif not _usable_user(env):
            env["METAFLOW_USER"] = "dagster"  # Metaflow refuses to run without a user name
        if self.production_token:
            env["METAFLOW_PRODUCTION_TOKEN"] = self.production_token
        if self.datastore_type == "local" and self.datastore_root:
            env.setdefault("METAFLOW_DATASTORE_SYSROOT_LOCAL", os.path.dirname(self.datastore_root))
        return env

    # -- datastore --------------------------------------------------------------------
    @cached_property
    def _flow_datastore(self) -> Any:
        from metaflow.datastore import FlowDataStore
        from metaflow.plugins import DATASTORES

        impl = next((d for d in DATASTORES if d.TYPE == self.datastore_type), None)
        if impl is None:
            raise RuntimeError(f"Metaflow datastore {self.datastore_type!r} is not available")
        root = self.datastore_root or impl.get_datastore_root_from_config(lambda *a, **k: None)
        return FlowDataStore(self.name, None, None, None, None, storage_impl=impl, ds_root=root)

    def task_datastore(self, pathspec: str, attempt: int | None = None, mode: str = "r") -> Any:
        run_id, step, task_id = pathspec.split("/")
        return self._flow_datastore.get_task_datastore(run_id, step, task_id, attempt=attempt, mode=mode)

    def _succeeded(self, pathspec: str) -> bool:
        """The task's latest attempt finished successfully (Metaflow marks failed attempts
        done too, with `_task_ok` False)."""
        try:
            return bool(self.task_datastore(pathspec).get("_task_ok", False))
        except Exception:
            return False

    def _fresh_attempt(self, pathspec: str, retry_count: int, max_user_code_retries: int) -> tuple[int, int]:
        """(attempt, max user code retries) for a task that a lost worker may have started:
        attempt numbers are never reused, and the lost attempts do not eat the @retry budget."""
        from metaflow.metaflow_config import MAX_ATTEMPTS

        run_id, step, task_id = pathspec.split("/")
        try:
            started = self._flow_datastore.get_task_datastore(
                run_id, step, task_id, mode="r", allow_not_done=True
            ).attempt
        except Exception:
            started = None
        if started is None or started < retry_count:
            return retry_count, max_user_code_retries
        attempt = started + 1
        if attempt >= MAX_ATTEMPTS:
            raise Failure(
                description=f"Metaflow task {pathspec} has used all {MAX_ATTEMPTS} attempts Metaflow "
                "allows (attempts were lost with run workers that died)",
                allow_retries=False,
            )
        return attempt, max_user_code_retries + attempt - retry_count

    # -- operations used by generated ops ----------------------------------------------
    def run_id(self, context: OpExecutionContext) -> str:
        """The Metaflow run of this Dagster run; prepares it once per process (tags, and for a
        Dagster re-execution the new Metaflow run with the reused tasks cloned)."""
        run_id = metaflow_run_id(context.run_id)
        self.resolve_code(context)
        _PREPARE.once(context.run_id, lambda: self._prepare_run(context, run_id))
        return run_id

    def run_tags(self, context: OpExecutionContext, tags: Sequence[str]) -> list[str]:
        """The flow's tags; a production deployment adds the deployer as `user:` (the identity
        system tag is `production:<token>` there; a user deployment has `user:` as its own).
        The Dagster run is recorded as task metadata (`dagster_internal`), not as a tag."""
        extra = [f"user:{self.owner}"] if self.owner and self.production_token else []
        return [*tags, *(t for t in extra if t not in tags)]

    def _prepare_run(self, context: OpExecutionContext, run_id: str) -> None:
        from .resume import prepare_reexecution

        self._check_flow_unchanged()
        tag = f"{self.name}/{run_id}"
        try:
            if context.run.tags.get(TAG_PATHSPEC) != tag:
                context.instance.add_run_tags(context.run_id, {TAG_PATHSPEC: tag})
        except Exception:
            pass
        origin = origin_of(context)
        if origin is not None and origin.reexecution:
            prepare_reexecution(self, context, run_id, origin)

    def _check_flow_unchanged(self) -> None:
        """Without a code package, a run may only use the flow file `create` compiled."""
        if not self.flow_fingerprint or self.package:
            return
        from .package import file_fingerprint

        try:
            current: str | None = file_fingerprint(self.source_path)
        except OSError:
            current = None
        if current != self.flow_fingerprint:
            state = "is missing" if current is None else "changed"
            raise Failure(
                description=f"the flow file {self.source_path} {state} since `dagster create`: "
                f"run `python {os.path.basename(self.source_path)} dagster create` again"
            )

    def task_id(self, context: OpExecutionContext, step: str) -> str:
        return task_id_for(step, context.get_mapping_key())

    def split_index(self, context: OpExecutionContext) -> int | None:
        """The foreach index of a mapped op; None for an unbounded foreach's control task."""
        key = context.get_mapping_key()
        if naming.is_ubf_key(key):
            return None
        return naming.indices_from_mapping_key(key)[-1]

    def init_run(
        self,
        context: OpExecutionContext,
        run_id: str,
        config: Any,
        tags: Sequence[str] = (),
    ) -> str:
        """Persist the run's parameters once (`flow.py init`); returns the _parameters pathspec.

        Idempotent: a retried start op finds the finished _parameters task and reuses it.
        """
        pathspec = f"{run_id}/{PARAMS_STEP}/{PARAMS_TASK_ID}"
        if self._succeeded(pathspec):
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
        pathspec = f"{run_id}/{PARAMS_STEP}/{PARAMS_TASK_ID}"
        argv = [*self.base_argv(), "init", "--run-id", run_id, "--task-id", PARAMS_TASK_ID]
        for tag in self.run_tags(context, self.tags if tags is None else tags):
            argv += ["--tag", tag]
        env = self.step_env({k: v for k, v in parameters.items() if v is not None})
        result = self._supervise(context, argv, env, timeout=None)
        if result.returncode != 0:
            raise Failure(
                description=f"Metaflow could not initialise run {run_id} (flow.py init "
                f"exited with {result.returncode}):\n" + "\n".join(result.stderr_tail[-20:]),
            )
        return pathspec

    def parameter_env_from_run_config(self, run_config: Mapping[str, Any]) -> dict[str, str | None]:
        """METAFLOW_INIT_* values from a run config (a re-execution runs no start op)."""
        ops = run_config.get("ops") or {}
        start = next((v for k, v in ops.items() if k == "op_start" or k.endswith("start")), None) or {}
        values = start.get("config") or {}
        out: dict[str, str | None] = {}
        for field_name, env_var, typ in self.parameters:
            alias = env_var[len("METAFLOW_INIT_") :].lower()
            value = values.get(field_name)
            if value is None:
                value = next((v for k, v in values.items() if k.lower().replace("-", "_") == alias), None)
            out[env_var] = _param_text(value, typ)
        return out

    def origin_tasks(self, origin_run_id: str) -> list[Any]:
        """Task datastores (latest attempt) of every task of a Metaflow run."""
        return list(self._flow_datastore.get_task_datastores(run_id=origin_run_id))

    def clone_task(self, context: OpExecutionContext, source: str, target: str, tags: Sequence[str] = ()) -> None:
        """Clone task `source` (run/step/task) as `target` with Metaflow's `step --clone-only`."""
        if self._succeeded(target):
            return
        run_id, step, task_id = target.split("/")
        argv = [*self.base_argv(), "step", step, "--run-id", run_id, "--task-id", task_id]
        argv += ["--clone-only", source, "--clone-run-id", source.split("/")[0], "--retry-count", "0"]
        for tag in tags:
            argv += ["--tag", tag]
        _announce(f"[dagster-metaflow] cloning Metaflow task {self.name}/{source} as {target}\n")
        result = self._supervise(context, argv, self.step_env(), timeout=None)
        if result.returncode != 0:
            raise Failure(
                description=f"Metaflow could not clone task {source} into {target} (exit "
                f"{result.returncode}):\n" + "\n".join(result.stderr_tail[-20:])
            )

    def parameter_env(self, config: Any) -> dict[str, str | None]:
        """METAFLOW_INIT_* values from the op's Config (None: keep the flow's default)."""
        out: dict[str, str | None] = {}
        for field_name, env_var, typ in self.parameters:
            value = getattr(config, field_name, None) if config is not None else None
            out[env_var] = _param_text(value, typ)
        return out

    def run_step(
        self,
        context: OpExecutionContext,
        step: str,
        run_id: str,
        upstream: str | Sequence[str],
        task_id: str,
        *,
        retry_count: int = 0,
        max_user_code_retries: int = 0,
        tags: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        timeout: int | None = None,
        split_index: int | None = None,
        ubf_context: str | None = None,
        decorator_specs: Sequence[str] = (),
        launcher: str | None = None,
    ) -> str:
        """Run one Metaflow task to completion; return its pathspec `run/step/task`.

        With `launcher` (@kubernetes, @batch, @conda, @pypi) the task is launched by its
        decorators' runtime hooks as under `flow.py run` (see native.py), never forked."""
        from metaflow.mflog import RUNTIME_LOG_SOURCE

        paths = [upstream] if isinstance(upstream, str) else list(upstream)
        # "" comes from a branch not taken (a switch inside a foreach yields every output);
        # inputs reused from a parent run (Dagster re-execution) were cloned into this run
        paths = [in_run(p, run_id) for p in paths if taken(p)]
        pathspec = f"{run_id}/{step}/{task_id}"
        if not paths:
            _announce(f"[dagster-metaflow] branch not taken: no Metaflow task for step {step!r}\n")
            return not_taken(pathspec)
        parallel_control = ubf_context == "ubf_control"  # @parallel (compiled in)
        if ubf_context is None and is_ubf_control(task_id) and not any(map(is_ubf_control, paths)):
            ubf_context = "ubf_control"  # the first step of an unbounded foreach
        # the join of an unbounded foreach joins the tasks its control task started, in the
        # control task's order (their ids share one index path)
        paths = self._ubf_mappers(sorted(paths, key=_path_sort_key), run_id)
        origin = origin_of(context)
        if origin is not None and origin.may_clone(step):
            source = f"{origin.run_id}/{step}/{task_id}"
            if self._succeeded(source):
                tags = self.run_tags(context, tags)
                self.clone_task(context, source, pathspec, tags=tags)
                if ubf_context == "ubf_control":  # its mapper tasks go with it, as natively
                    for mapper in self._control_mappers(pathspec, origin.run_id):
                        if mapper != source:
                            self.clone_task(context, mapper, in_run(mapper, run_id), tags=tags)
                self._finish_task(context, step, pathspec)
                return pathspec
        if os.environ.get(RECOVERING_VAR):  # a new worker of a run whose worker died
            if self._succeeded(pathspec):  # finished before the worker died: not run again
                _announce(f"[dagster-metaflow] task {pathspec} finished before the run worker was lost\n")
                self._finish_task(context, step, pathspec)
                return pathspec
            retry_count, max_user_code_retries = self._fresh_attempt(pathspec, retry_count, max_user_code_retries)
        if launcher in REMOTE_COMPUTE_DECORATORS and not self.package:
            raise Failure(
                description=f"step {step!r} runs on @{launcher} from the deployment's code package, "
                f"which this run cannot find: run `python {os.path.basename(self.source_path)} dagster create` again"
            )
        argv = self.step_argv(
            step,
            run_id,
            task_id,
            paths,
            retry_count=retry_count,
            max_user_code_retries=max_user_code_retries,
            tags=self.run_tags(context, tags),
            clone_run_id=origin.run_id if origin is not None else None,
            split_index=split_index,
            ubf_context=ubf_context,
            num_parallel=self.num_parallel(paths[0]) if parallel_control else None,
            decorator_specs=decorator_specs,
            launcher=launcher,
        )
        env = self.step_env(extra_env)
        env["METAFLOW_RUN_ID"] = run_id
        env.update(_dagster_env(context))
        if launcher:
            env = self.launcher_env(env)

        attempt = f" (retry {retry_count})" if retry_count else ""
        # announced in the step's own compute log, not as an event: on the default SQLite
        # instance every event is an fsync'd commit
        _announce(f"[dagster-metaflow] running Metaflow task {self.name}/{pathspec}{attempt}\n")
        stdout, stderr = _MflogBuffer(), _MflogBuffer()

        def keep(stream: str, line: bytes) -> None:
            (stdout if stream == "stdout" else stderr).add(line)

        # Metaflow's own @timeout handler ends the task at the deadline and records it as
        # natively (TimeoutException, attempt done and not ok); ours is the backstop that
        # guarantees the deadline and leaves no survivors
        backstop = None if timeout is None else timeout + TIMEOUT_BACKSTOP
        try:
            result = self._supervise(context, argv, env, timeout=backstop, on_line=keep, fork=not launcher)
        except BaseException as exc:
            keep("stderr", f"Task interrupted: {_describe_interrupt(exc)}\n".encode())
            self._save_logs(pathspec, retry_count, stdout, stderr, RUNTIME_LOG_SOURCE)
            if isinstance(exc, StepInterrupted):
                from dagster import DagsterExecutionInterruptedError

                raise DagsterExecutionInterruptedError(
                    f"step {step!r} stopped: {exc}"
                ) from None
            raise
        # a failure at the deadline is a timeout, whichever side ended it
        timed_out = result.timed_out or (
            timeout is not None and result.returncode != 0 and result.duration >= timeout - 0.5
        )
        if timed_out:
            keep("stderr", f"Task timed out after {timeout} seconds (@timeout).\n".encode())
        elif result.returncode != 0:
            # what the native runtime writes into the task's log for a failed process
            crash = result.returncode == -signal.SIGSEGV
            keep("stderr", b"Task failed with a segmentation fault.\n" if crash else b"Task failed.\n")
        if result.timed_out:
            self._record_backstop_timeout(pathspec, retry_count, timeout)
        self._save_logs(pathspec, retry_count, stdout, stderr, RUNTIME_LOG_SOURCE)

        if launcher and result.returncode != 0:
            from .native import LAUNCH_ERROR_PREFIX

            launch_failed = [ln for ln in result.stderr_tail if ln.startswith(LAUNCH_ERROR_PREFIX)]
            if launch_failed:  # the task never started: Metaflow's one line says why
                raise Failure(
                    description=launch_failed[-1][len(LAUNCH_ERROR_PREFIX) :],
                    metadata={"pathspec": MetadataValue.text(f"{self.name}/{pathspec}")},
                    allow_retries=False,
                )
        if timed_out or result.returncode != 0:
            why = (
                f"timed out after {timeout}s (@timeout); its process group was terminated"
                if timed_out
                else f"exited with code {result.returncode}"
            )
            tail = "\n".join(result.stderr_tail) or "(no stderr output)"
            user_error = self._user_error(pathspec, retry_count)
            raise Failure(
                description=f"Metaflow step {step!r} (task {pathspec}){attempt} {why}.\n"
                + (f"{user_error}\n" if user_error else "")
                + f"Last lines of stderr:\n{tail}",
                metadata={
                    "pathspec": MetadataValue.text(f"{self.name}/{pathspec}"),
                    "retry_count": MetadataValue.int(retry_count),
                    "returncode": MetadataValue.int(result.returncode),
                },
                # Metaflow's "do not retry" exit (e.g. a remote task that could not be
                # launched, or was killed), honoured as its runtime does
                allow_retries=result.returncode != METAFLOW_EXIT_DISALLOW_RETRY,
            )
        self._finish_task(context, step, pathspec, result.duration)
        return pathspec

    def _finish_task(
        self, context: OpExecutionContext, step: str, pathspec: str, duration: float | None = None
    ) -> None:
        """After a task succeeded: check its transition (a switch's is checked where its choice
        is read) and show the task on the op's output, from one datastore read."""
        ds = None
        if step in self.transitions and step not in self.switch_steps:
            ds = self.task_datastore(pathspec)
            self.check_transition(step, pathspec, ds)
        if _single_output(context):
            context.add_output_metadata(self._task_metadata(pathspec, ds, duration=duration))

    def check_transition(self, step: str, pathspec: str, ds: Any = None, switch: bool = False) -> list[str]:
        """The steps the task's `self.next()` named (its `_transition`), checked against the
        graph as Metaflow's runtime checks every finished task. A mismatch (e.g. a decorator
        replaced the body, so self.next() never ran) is Metaflow's MetaflowInternalError,
        fatal for the run: the op fails with Metaflow's message and is not retried."""
        ds = ds if ds is not None else self.task_datastore(pathspec)
        trans = ds.get("_transition", None)
        actual = [str(s) for s in trans[0]] if trans else []
        expected = self.transitions.get(step)
        problem = transition_error(step, actual, expected, switch or step in self.switch_steps)
        if problem is not None:
            raise Failure(
                description=f"Internal error: {problem}",
                metadata={"pathspec": MetadataValue.text(f"{self.name}/{pathspec}")},
                allow_retries=False,
            )
        return actual

    def step_argv(
        self,
        step: str,
        run_id: str,
        task_id: str,
        paths: Sequence[str],
        *,
        retry_count: int = 0,
        max_user_code_retries: int = 0,
        tags: Sequence[str] = (),
        clone_run_id: str | None = None,
        split_index: int | None = None,
        ubf_context: str | None = None,
        num_parallel: int | None = None,
        decorator_specs: Sequence[str] = (),
        launcher: str | None = None,
    ) -> list[str]:
        """The command of one task attempt: `flow.py step ...`, or with a `launcher`
        `flow.py dagster launch-step ...`, which builds the task's command with Metaflow's
        runtime hooks and runs it."""
        from metaflow.util import compress_list

        argv = self.base_argv()
        for spec in (*decorator_specs, "dagster_internal"):
            argv.append(f"--with={spec}")
        argv += ["dagster", "launch-step"] if launcher else ["step"]
        argv += [
            step,
            "--run-id",
            run_id,
            "--task-id",
            task_id,
            "--retry-count",
            str(retry_count),
            "--max-user-code-retries",
            str(max_user_code_retries),
            "--input-paths",
            compress_list(list(paths)),
        ]
        if clone_run_id is not None:
            # a task run again in a resumed run: `current.origin_run_id` and its
            # `origin-run-id` metadata name the origin, as under `flow.py resume`
            argv += ["--clone-run-id", clone_run_id]
        if split_index is not None:
            argv += ["--split-index", str(split_index)]
        if ubf_context is not None:
            argv += ["--ubf-context", ubf_context]
        if num_parallel is not None:
            # what @parallel's runtime_step_cli adds for a local control task
            argv += ["--num-parallel", str(num_parallel), "--split-index", "0"]
        for tag in tags:
            argv += ["--tag", tag]
        if self.namespace is not None:
            argv.append(f"--namespace={self.namespace}")
        if launcher:
            argv.append(f"--launcher={launcher}")
            package = self.package
            if package:  # the package `create` saved: the remote task runs exactly it
                argv += [
                    f"--package-url={package['url']}",
                    f"--package-sha={package['sha']}",
                    f"--package-metadata={package.get('metadata', '')}",
                ]
        return argv

    def launcher_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The environment of `dagster launch-step`: with a deployed code package, the
        decorators take its url/sha instead of uploading the package again (Metaflow's path
        for a package uploaded ahead); the task gets the user's own setting back."""
        from .native import UPLOADED_PACKAGE_FLAG, USER_FLAG_VAR

        out = dict(env)
        if self.package:
            out[USER_FLAG_VAR] = out.get(UPLOADED_PACKAGE_FLAG, "")
            out[UPLOADED_PACKAGE_FLAG] = "1"
        return out

    def fan_out(self, context: OpExecutionContext, pathspec: str) -> Iterator[DynamicOutput[str]]:
        """One DynamicOutput per foreach split, read from the task's final attempt."""
        children = list(self._children(pathspec, with_metadata=True))
        context.log.info(f"Foreach {pathspec} yields {len(children)} child task(s)")
        yield from children

    def fan_out_all(self, context: OpExecutionContext, pathspecs: Sequence[str]) -> Iterator[DynamicOutput[str]]:
        """Nested foreach: fan out the children of every collected foreach task at once."""
        count = 0
        for pathspec in sorted(pathspecs, key=_path_sort_key):
            if not taken(pathspec):
                # a foreach on a branch not taken: one marker child keeps its place
                yield DynamicOutput(pathspec, mapping_key=naming.mapping_key((*indices_of(pathspec), 0)))
                continue
            for child in self._children(pathspec):
                count += 1
                yield child
        context.log.info(f"{len(pathspecs)} foreach task(s) yield {count} child task(s)")

    def _children(self, pathspec: str, with_metadata: bool = False) -> Iterator[DynamicOutput[str]]:
        """Children of one foreach task, keyed by its index path (from its task id) + i."""
        ds = self.task_datastore(pathspec)
        num_splits = int(ds["_foreach_num_splits"] or 0)
        metadata = self._task_metadata(pathspec, ds) if with_metadata else None
        parent = indices_of(pathspec)
        if "_unbounded_foreach" in ds and ds["_unbounded_foreach"]:
            # one control task, which starts the foreach's tasks itself (Metaflow's UBF)
            yield DynamicOutput(pathspec, mapping_key=naming.mapping_key(parent, ubf=True), metadata=metadata)
            return
        for i in range(num_splits):
            yield DynamicOutput(pathspec, mapping_key=naming.mapping_key((*parent, i)), metadata=metadata)

    def _ubf_mappers(self, paths: Sequence[str], run_id: str) -> list[str]:
        """`paths` with every unbounded-foreach control task replaced by the tasks it started
        (`_control_mapper_tasks`, placed in `run_id`: a cloned control lists its origin's)."""
        out: list[str] = []
        for path in paths:
            out.extend(self._control_mappers(path, run_id) if is_ubf_control(path) else [path])
        return out

    def _control_mappers(self, control: str, run_id: str) -> list[str]:
        """The tasks a control task (@parallel, unbounded foreach) started, placed in `run_id`."""
        mappers = self.task_datastore(control)["_control_mapper_tasks"]
        if not mappers:
            raise Failure(description=f"control task {control} listed no mapper tasks")
        return [in_run(str(m), run_id) for m in mappers]

    def regroup(
        self, context: OpExecutionContext, depth: int, *inputs: Sequence[str]
    ) -> Iterator[DynamicOutput[list[str]]]:
        """Group collected pathspecs by their first `depth` foreach indices, one output each."""
        groups: dict[tuple[int, ...], list[str]] = {}
        for values in inputs:
            for pathspec in values:
                groups.setdefault(indices_of(pathspec)[:depth], []).append(pathspec)
        for key in sorted(groups):
            yield DynamicOutput(sorted(groups[key], key=_path_sort_key), mapping_key=naming.mapping_key(key))

    def num_parallel(self, pathspec: str) -> int:
        """N of `self.next(..., num_parallel=N)`, from the splitting task's final attempt."""
        ds = self.task_datastore(pathspec)
        return int(ds[ds["_foreach_var"]].num_parallel)

    def mapper_tasks(self, pathspec: str) -> list[str]:
        """The tasks of a @parallel step (control + workers), from its control task."""
        if not taken(pathspec):
            return [pathspec]
        return self._control_mappers(pathspec, pathspec.split("/")[0])

    def chosen_step(self, pathspec: str) -> str:
        """The step a switch task chose, read from its final attempt and checked against the
        graph (exactly one of the switch's targets) as Metaflow's runtime does."""
        (chosen,) = self.check_transition(pathspec.split("/")[1], pathspec, switch=True)
        return chosen

    def switch(
        self, context: OpExecutionContext, pathspec: str, outputs: Mapping[str, str], always: bool = False
    ) -> Iterator[Output[str]]:
        """Yield the output of the branch the switch task chose. The other outputs are not
        yielded (Dagster skips those branches) or, with `always`, carry a not-taken marker."""
        if not taken(pathspec):  # this switch itself is on a branch not taken
            for name in outputs.values():
                yield Output(pathspec, name)
            return
        chosen = self.chosen_step(pathspec)
        if chosen not in outputs:
            raise Failure(description=f"switch task {pathspec} chose unknown step {chosen!r}")
        context.log.info(f"Switch {pathspec} chose {chosen!r}")
        yield Output(pathspec, outputs[chosen])
        if always:
            for step, name in outputs.items():
                if step != chosen:
                    yield Output(not_taken(pathspec), name)

    def run_loop(
        self,
        context: OpExecutionContext,
        step: str,
        run_id: str,
        upstream: str | Sequence[str],
        task_id: str,
        *,
        outputs: Mapping[str, str],
        max_retries: int = 0,
        retry_delay: int | None = None,
        always: bool = False,
        **kwargs: Any,
    ) -> Iterator[Output[str]]:
        """A recursive switch: one Metaflow task per iteration until it leaves the loop.

        Each iteration has its own attempts, as natively: `current.retry_count` starts at 0
        in every iteration and @retry (`max_retries`, `retry_delay`) applies per iteration.
        An op that is started again resumes after the last finished iteration. With `always`
        (a loop inside a foreach) the exits not taken carry a not-taken marker, as `switch`.
        """
        import time

        kwargs.pop("retry_count", None)
        ups = [upstream] if isinstance(upstream, str) else list(upstream)
        if not any(taken(u) for u in ups):
            for name in outputs.values():
                yield Output(not_taken(f"{run_id}/{step}/{task_id}"), name)
            return
        iteration, previous = 0, upstream
        while True:
            tid = task_id if iteration == 0 else f"{task_id}-r{iteration}"
            pathspec = f"{run_id}/{step}/{tid}"
            attempt = self._attempts_made(pathspec)
            while not self._succeeded(pathspec):
                try:
                    self.run_step(context, step, run_id, previous, tid, retry_count=attempt, **kwargs)
                except Failure as exc:
                    if attempt >= max_retries or not exc.allow_retries:
                        raise
                    context.log.warning(
                        f"Loop {step!r} iteration {iteration + 1} attempt {attempt} failed; "
                        f"retrying{f' in {retry_delay}s' if retry_delay else ''}"
                    )
                    if retry_delay:
                        time.sleep(retry_delay)
                    attempt += 1
            chosen = self.chosen_step(pathspec)
            if chosen != step:
                context.log.info(f"Loop {step!r} finished after {iteration + 1} iteration(s)")
                yield Output(pathspec, outputs[chosen])
                if always:
                    for target, name in outputs.items():
                        if target != chosen:
                            yield Output(not_taken(pathspec), name)
                return
            iteration, previous = iteration + 1, pathspec

    def run_exit_hook(self, name: str, run_pathspec: str) -> tuple[bool, str]:
        """Run one @exit_hook function as Metaflow's runtime does (its exit_hook_script, in
        the steps' environment); returns (succeeded, its output)."""
        import subprocess

        argv = [sys.executable, "-m", "metaflow.plugins.exit_hook.exit_hook_script", self.flow_path, name, run_pathspec]
        timeout = float(os.environ.get("DAGSTER_METAFLOW_EXIT_HOOK_TIMEOUT", "300"))
        try:
            proc = subprocess.Popen(
                argv, env=self.step_env(), cwd=self.cwd, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, start_new_session=True,
            )
        except OSError as exc:
            return False, str(exc)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the hook and anything it started
            out, _ = proc.communicate()
            return False, (out or "").strip() + f"\n[exit_hook] {name} killed after {timeout:g}s"
        return proc.returncode == 0, (out or "").strip()

    # -- helpers ------------------------------------------------------------------------
    def _supervise(
        self, context: OpExecutionContext, argv: list[str], env: dict[str, str], fork: bool = True, **kw: Any
    ) -> Any:
        spawn = spawn_step_process if fork else None
        if current_control.get() is not None:  # our executor stops its steps itself
            return run_supervised(argv, env=env, cwd=self.cwd, spawn=spawn, **kw)
        # another executor runs this op (a multiprocess child, a Celery worker, a pod): a
        # terminated run may never tell this process, so watch the run's status instead
        with watch_run(context) as control:
            return run_supervised(argv, env=env, cwd=self.cwd, spawn=spawn, control=control, **kw)

    def _user_error(self, pathspec: str, attempt: int) -> str | None:
        """The user's exception as Metaflow recorded it (`_exception`), with the traceback
        from the first frame outside Metaflow: what the Dagster failure shows first."""
        try:
            ds = self.task_datastore(pathspec, attempt=attempt)
            if "_exception" not in ds:
                return None
            exc = ds["_exception"]
        except Exception:
            return None
        head = f"{getattr(exc, 'type', 'Exception')}: {getattr(exc, 'exception', '')}"
        import metaflow

        internal = os.path.dirname(os.path.abspath(metaflow.__file__))
        trace = (getattr(exc, "stacktrace", None) or "").splitlines()
        user = [i for i, ln in enumerate(trace) if ln.strip().startswith("File ") and internal not in ln]
        frames = trace[user[0] :] if user else []
        return "\n".join([head, *(["Traceback (user code):", *frames] if frames else [])])

    def _attempts_made(self, pathspec: str) -> int:
        """Number of attempts a task already has (0 when it never started)."""
        try:
            return int(self.task_datastore(pathspec).attempt) + 1
        except Exception:
            return 0

    def _record_backstop_timeout(self, pathspec: str, attempt: int, timeout: int | None) -> None:
        """The task ignored Metaflow's own timeout (stuck outside Python) and was killed:
        mark its attempt done as Metaflow would have, so clients see a finished, failed task."""
        try:
            ds = self.task_datastore(pathspec, attempt=attempt, mode="w")
            if not ds.has_metadata("attempt_done"):
                ds.done()
        except Exception as exc:
            print(f"dagster-metaflow: could not mark {pathspec} done after timeout {timeout}s: {exc}", file=sys.stderr)

    def _save_logs(
        self, pathspec: str, attempt: int, stdout: _MflogBuffer, stderr: _MflogBuffer, source: str
    ) -> None:
        try:
            ds = self.task_datastore(pathspec, attempt=attempt, mode="w")
            ds.save_logs(source, {"stdout": stdout.getbuffer(), "stderr": stderr.getbuffer()})
        except Exception as exc:  # logs must never turn a good task into a failure
            print(f"dagster-metaflow: could not persist logs of {pathspec}: {exc}", file=sys.stderr)

    def _task_metadata(self, pathspec: str, ds: Any = None, duration: float | None = None) -> dict[str, Any]:
        """What the UI shows on an op's output: where the task is and what it produced."""
        md: dict[str, Any] = {
            "pathspec": MetadataValue.text(f"{self.name}/{pathspec}"),
            "client": MetadataValue.md(
                f"```python\nfrom metaflow import Task\nTask({f'{self.name}/{pathspec}'!r})\n```"
            ),
        }
        if duration is not None:
            md["duration_s"] = MetadataValue.float(round(duration, 3))
        try:
            ds = ds if ds is not None else self.task_datastore(pathspec)
            md["attempt"] = MetadataValue.int(int(ds.attempt))
            names = sorted(n for n in ds if not n.startswith("_"))  # names only, no loading
            md["artifacts"] = MetadataValue.text(", ".join(names))
        except Exception:
            pass
        step = pathspec.split("/")[1]
        if step in self.card_steps:
            md.update(self._card_metadata(pathspec))
        return md

    def _card_metadata(self, pathspec: str) -> dict[str, Any]:
        """The task's cards: their files (local datastore) and the command that opens them."""
        run_id, step, task_id = pathspec.split("/")
        flow_file = os.path.basename(self.source_path)
        md: dict[str, Any] = {
            "card_view": MetadataValue.text(f"python {flow_file} card view {run_id}/{step}/{task_id}"),
        }
        root = self._card_root()
        if root is not None:
            folder = Path(root, self.name, "runs", run_id, "steps", step, "tasks", task_id, "cards")
            for i, html in enumerate(sorted(folder.glob("*.html"))):
                md[f"card_{i}" if i else "card"] = MetadataValue.path(str(html))
        return md

    def _card_root(self) -> str | None:
        """Where Metaflow's local card store keeps cards for steps run in `self.cwd`
        (CardDatastore.get_storage_root, evaluated from the steps' working directory)."""
        if self.datastore_type != "local":
            return None
        configured = os.environ.get("METAFLOW_CARD_LOCALROOT")
        if configured:
            return configured
        current = self.cwd
        while True:
            candidate = os.path.join(current, ".metaflow")
            if os.path.isdir(candidate):
                return os.path.join(os.path.realpath(candidate), "mf.cards")
            parent = os.path.dirname(current)
            if parent == current:
                return None
            current = parent


def flow_of_job(job_def: Any) -> MetaflowFlow | None:
    """The compiled flow a job runs (the generated module's FLOW), by the job's flow tag."""
    by_job = [f for f in _LIVE_FLOWS if f.job_name == job_def.name]
    if by_job:
        return by_job[-1]
    name = job_def.tags.get("metaflow/flow")
    matches = [f for f in _LIVE_FLOWS if f.name == name and f.job_name is None]
    return matches[-1] if matches else None


def _dagster_env(context: OpExecutionContext) -> dict[str, str]:
    """Where the task runs in Dagster, for the `dagster_internal` decorator's metadata."""
    key = str(context.op_handle)
    if context.get_mapping_key():
        key += f"[{context.get_mapping_key()}]"
    env = {
        "DAGSTER_METAFLOW_DAGSTER_RUN_ID": context.run_id,
        "DAGSTER_METAFLOW_JOB": context.job_name,
        "DAGSTER_METAFLOW_STEP_KEY": key,
    }
    triggers = context.run.tags.get("dagster-metaflow/triggers")
    if triggers:  # the events that started this run: `current.trigger` (dagster_internal)
        env["DAGSTER_METAFLOW_TRIGGERS"] = triggers
    base = os.environ.get("DAGSTER_METAFLOW_UI_URL")
    if base:
        env["DAGSTER_METAFLOW_RUN_URL"] = f"{base.rstrip('/')}/runs/{context.run_id}"
    return env


@contextmanager
def watch_run(context: OpExecutionContext, every: float | None = None) -> Iterator[StepControl]:
    """A StepControl cancelled when the run is being terminated (CANCELING/CANCELED),
    polled from the instance every `every` seconds ($DAGSTER_METAFLOW_CANCEL_POLL, 2 s)."""
    from dagster import DagsterRunStatus

    control = StepControl(reason="run terminated")
    every = every if every is not None else float(os.environ.get("DAGSTER_METAFLOW_CANCEL_POLL", "2"))
    done = threading.Event()
    stopping = (DagsterRunStatus.CANCELING, DagsterRunStatus.CANCELED)

    def poll() -> None:
        while not done.wait(every):
            try:
                run = context.instance.get_run_by_id(context.run_id)
            except Exception:  # a busy instance: ask again at the next tick
                continue
            if run is not None and run.status in stopping:
                control.cancel.set()
                return

    watcher = threading.Thread(target=poll, name="dagster-metaflow-run-watch", daemon=True)
    watcher.start()
    try:
        yield control
    finally:
        done.set()


def _announce(text: str) -> None:
    control = current_control.get()
    line = text.encode()
    if control is not None and control.sink is not None:
        control.sink("stderr", line)
    else:
        sys.stderr.write(text)
        sys.stderr.flush()


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


def _content_file(kind: str, text: str) -> str:
    """A file holding `text`, named by its hash, under the temp dir (written once)."""
    import hashlib
    import tempfile

    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    folder = os.path.join(tempfile.gettempdir(), f"dagster_metaflow_{kind}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{digest}.json")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def _usable_user(env: Mapping[str, str]) -> bool:
    """Metaflow finds a user name (it skips root, as `metaflow.util.get_username` does)."""
    return any(env.get(v) and env.get(v) != "root" for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER"))


def _single_output(context: OpExecutionContext) -> bool:
    try:
        return len(context.op_def.output_defs) == 1 and not context.op_def.output_defs[0].is_dynamic
    except Exception:
        return False


def _path_sort_key(pathspec: str) -> tuple[Any, ...]:
    step = pathspec.split("/")[1]
    return (step, indices_of(pathspec), pathspec)


def _describe_interrupt(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
