"""The command and environment of a step's process: which flow file (the compiled one, or
its code package's copy), Metaflow's top-level options, and `flow.py step ...` made from a
TaskOptions record.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

from dagster import Failure, OpExecutionContext

from ..task_options import TaskOptions
from .settings import FlowSettings
from .taskstore import TaskStore

_CODE: dict[str, Mapping[str, str] | None] = {}  # flow fingerprint -> code package (per process)
INTERNAL_DECORATOR = "dagster_internal"  # every task records where it ran in Dagster


class StepCommand:
    """How the processes of one flow's tasks are started."""

    def __init__(self, settings: FlowSettings, store: TaskStore) -> None:
        self.settings = settings
        self.store = store

    # -- the flow file and its code package -------------------------------------------
    @cached_property
    def source_path(self) -> str:
        """The flow file `create` compiled (it may have changed or gone since)."""
        p = Path(self.settings.file)
        if not p.is_absolute() and self.settings.relative_to:
            p = Path(self.settings.relative_to) / p
        return str(p.resolve())

    @property
    def package(self) -> Mapping[str, str] | None:
        """The code package this process runs: given explicitly, or found by resolve_code."""
        return self.settings.code_package or _CODE.get(self.settings.flow_fingerprint or "")

    @property
    def flow_path(self) -> str:
        """The flow file steps run: the code package's copy when there is one."""
        package = self.package
        if not package:
            return self.source_path
        from .package import extracted

        root = extracted(self.store.flow_datastore, package)
        return os.path.join(root, os.path.basename(self.source_path))

    def resolve_code(self, context: OpExecutionContext) -> None:
        """Find the code package of this file's deployment (once per process): the record
        in the run's instance whose flow fingerprint is this file's."""
        key = self.settings.flow_fingerprint or ""
        if self.settings.code_package or not key or key in _CODE:
            return
        from ..deployments import get

        found = None
        try:
            dep = get(context.instance, self.settings.job_name or context.job_def.name)
            if dep is not None and dep.flow_fingerprint == key and dep.code_package:
                found = dict(dep.code_package)
        except Exception as exc:
            context.log.warning(
                f"could not read the deployment record of {context.job_def.name}: {exc}"
            )
        _CODE[key] = found

    def check_flow_unchanged(self) -> None:
        """Without a code package, a run may only use the flow file `create` compiled."""
        if not self.settings.flow_fingerprint or self.package:
            return
        from .package import file_fingerprint

        try:
            current: str | None = file_fingerprint(self.source_path)
        except OSError:
            current = None
        if current != self.settings.flow_fingerprint:
            state = "is missing" if current is None else "changed"
            raise Failure(
                description=f"the flow file {self.source_path} {state} since `dagster create`: "
                f"run `python {os.path.basename(self.source_path)} dagster create` again"
            )

    @cached_property
    def cwd(self) -> str:
        """Steps run where the flow lives (relative paths as with `python flow.py run`), or
        in the package's directory if that is gone."""
        here = os.path.dirname(self.source_path)
        return here if os.path.isdir(here) else os.path.dirname(self.flow_path)

    # -- command lines ---------------------------------------------------------------
    def base_argv(self) -> list[str]:
        """`python flow.py` with the deployment's top-level options."""
        s = self.settings
        argv = [sys.executable, self.flow_path, *s.top_level_args]
        argv.append(f"--datastore={s.datastore_type}")
        if s.datastore_root:
            argv.append(f"--datastore-root={s.datastore_root}")
        if s.config_values:
            argv.append(f"--local-config-file={self.config_file}")
        return argv

    def step_argv(self, task: TaskOptions) -> list[str]:
        """The command of one task attempt: `flow.py step ...`, or with a launcher
        `flow.py dagster launch-step ...`, which builds the task's command with Metaflow's
        runtime hooks and runs it."""
        specs = (*task.decorator_specs, INTERNAL_DECORATOR)
        return [*self.base_argv(), *(f"--with={spec}" for spec in specs), *task.cli_args()]

    @property
    def config_file(self) -> str:
        """The deployment's configs as a file Metaflow reads with --local-config-file (made
        once per host, marked used by every step command)."""
        assert self.settings.config_values is not None
        return _content_file("configs", self.settings.config_values)

    # -- environments ----------------------------------------------------------------
    @cached_property
    def config_env(self) -> dict[str, str]:
        """METAFLOW_FLOW_CONFIG_VALUE naming every config as `kv.<name>`: read its value from
        the config file, never parse it again (what Metaflow's schedulers do)."""
        if not self.settings.config_values:
            return {}
        import json

        names = sorted(json.loads(self.settings.config_values).get("user_configs", {}))
        return {"METAFLOW_FLOW_CONFIG_VALUE": json.dumps({n: f"kv.{n}" for n in names})}

    def step_env(self, extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of every step process: this one's, the deployment's, the step's."""
        s = self.settings
        env = dict(os.environ)
        env.update(s.environment)
        if extra_env:
            env.update(extra_env)
        env.update(self.config_env)
        package = self.package
        if package:  # recorded as the tasks' code package, as Argo does
            env["METAFLOW_CODE_URL"] = package["url"]
            env["METAFLOW_CODE_SHA"] = package["sha"]
            env["METAFLOW_CODE_DS"] = s.datastore_type
            env["METAFLOW_CODE_METADATA"] = package.get("metadata", "")
        env["PYTHONUNBUFFERED"] = "x"
        _put_interpreter_first(env)
        env["METAFLOW_RUNTIME_NAME"] = "dagster"  # system tag runtime:dagster
        if s.owner:
            # the deployer, as Metaflow's schedulers do; also makes USER=root work (Metaflow
            # ignores root when it looks for a user name)
            env["METAFLOW_USER"] = env["METAFLOW_OWNER"] = s.owner
        elif not _usable_user(env):
            env["METAFLOW_USER"] = "dagster"  # Metaflow refuses to run without a user name
        if s.production_token:
            env["METAFLOW_PRODUCTION_TOKEN"] = s.production_token
        if s.datastore_type == "local" and s.datastore_root:
            env.setdefault("METAFLOW_DATASTORE_SYSROOT_LOCAL", os.path.dirname(s.datastore_root))
        return env

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

    # -- exit hooks ------------------------------------------------------------------
    def run_exit_hook(self, name: str, run_pathspec: str) -> tuple[bool, str]:
        """Run one @exit_hook function as Metaflow's runtime does (its exit_hook_script, in
        the steps' environment); returns (succeeded, its output)."""
        import subprocess

        argv = [
            sys.executable,
            "-m",
            "metaflow.plugins.exit_hook.exit_hook_script",
            self.flow_path,
            name,
            run_pathspec,
        ]
        timeout = float(os.environ.get("DAGSTER_METAFLOW_EXIT_HOOK_TIMEOUT", "300"))
        try:
            proc = subprocess.Popen(
                argv,
                env=self.step_env(),
                cwd=self.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
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


def _put_interpreter_first(env: dict[str, str]) -> None:
    """Metaflow starts some processes as plain `python` (@parallel workers): make that the
    interpreter running this job, as an activated virtualenv would."""
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        env["PATH"] = bindir + (os.pathsep + path if path else "")


def _usable_user(env: Mapping[str, str]) -> bool:
    """Metaflow finds a user name (it skips root, as `metaflow.util.get_username` does)."""
    return any(
        env.get(v) and env.get(v) != "root"
        for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")
    )


def _content_file(kind: str, text: str) -> str:
    """A file holding `text`, named by its hash, in the host's cache of `kind` (written
    once, marked used at each call: `hostfiles.cached`)."""
    import hashlib

    from .hostfiles import cached

    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    return cached(kind, f"{digest}.json", lambda path: _write_new(path, text))


def _write_new(path: str, text: str) -> None:
    """Write `path` whole or not at all (a temporary name starting with "." first)."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
