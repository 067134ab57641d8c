"""DeployedFlow and TriggeredRun of the Dagster deployer (see `deployer`).

Commands that change
things (create, trigger, resume, terminate, delete) run `python flow.py dagster ...` as the
caller, as Metaflow's own deployers do, so the CLI's production-token check applies to them
and its refusal is raised here as `IncorrectProductionToken`; status reads the Dagster
instance directly.

Identifiers: `DeployedFlow.name` is the deployment (= Dagster job) name; `DeployedFlow.id`
is `<name>@<DAGSTER_HOME>`, which finds the deployment without DAGSTER_HOME set.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from metaflow.exception import MetaflowException
from metaflow.runner.deployer import DeployedFlow, TriggeredRun, generate_fake_flow_file_contents
from metaflow.runner.utils import get_lower_level_group, handle_timeout, temporary_fifo

from . import deployments, runs, tokens
from .runtime.ids import run_page_url
from .runtime.worker import settle

_FAKE_TYPES = {"json": "JSON", "int": "int", "float": "float", "bool": "bool", "str": "str"}


def _split_identifier(identifier: str) -> tuple[str, str | None]:
    name, sep, home = identifier.partition("@")
    return name, (home if sep else None)


def _command(impl: Any, verb: str, **kwargs: Any) -> list[str]:
    group: Any = get_lower_level_group(
        impl.api, impl.top_level_kwargs, impl.TYPE, impl.deployer_kwargs
    )
    return [sys.executable, *getattr(group, verb)(**kwargs)]


def _run_cli(impl: Any, verb: str, **kwargs: Any) -> tuple[int, str]:
    """Run `python flow.py dagster <verb>` in the caller's environment; (exit code, stderr)."""
    pid = impl.spm.run_command(
        _command(impl, verb, **kwargs),
        env=impl.env_vars,
        cwd=impl.cwd,
        show_output=impl.show_output,
    )
    command_obj: Any = impl.spm.get(pid)
    return int(command_obj.process.wait()), _stderr(command_obj)


def _stderr(command_obj: Any) -> str:
    command_obj.sync_wait()  # the log is complete once its reader thread has ended
    with open(command_obj.log_files["stderr"], encoding="utf-8", errors="replace") as f:
        return f.read()


def last_stderr(impl: Any) -> str:
    """The whole stderr of the last command the deployer ran (Metaflow's own error for a
    failed `create` may be made before the log is complete)."""
    commands = list(getattr(impl.spm, "commands", {}).values())
    return _stderr(commands[-1]) if commands else ""


def raise_if_refused(output: str) -> None:
    """Raise the CLI's production-token refusal found in its output as the Metaflow
    exception it is, with the CLI's own line (the Deployer guards as the CLI does)."""
    for line in output.splitlines():
        if tokens.REFUSAL_MARK in line:
            from .errors import IncorrectProductionToken

            raise IncorrectProductionToken(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).strip())


class DagsterTriggeredRun(TriggeredRun):
    """A run started on the Dagster instance."""

    def __init__(self, deployer: Any, content: str) -> None:
        super().__init__(deployer, content)
        data = json.loads(content)
        self.dagster_run_id: str | None = data.get("dagster_run_id")
        self.dagster_home: str | None = data.get("dagster_home") or getattr(
            deployer, "dagster_home", None
        )

    def _run(self) -> Any:
        with deployments.open_instance(self.dagster_home) as instance:
            if self.dagster_run_id:
                return settle(instance, instance.get_run_by_id(self.dagster_run_id))
            run = runs.find_run(instance, self.pathspec.split("/")[1], self.deployer.name)
            if run is not None:
                self.dagster_run_id = run.run_id
            return run

    @property
    def status(self) -> str | None:
        """PENDING, RUNNING, SUCCEEDED, FAILED or ABORTED (None if the run is unknown)."""
        name = runs.status_name(self._run())
        if name == "RUNNING" and self.run is None:
            return "PENDING"
        return name

    @property
    def is_running(self) -> bool:
        return self.status in ("PENDING", "RUNNING")

    @property
    def error(self) -> str | None:
        """Why the run failed, in one line (its first failed task and the user's error, or
        its workflow timeout); None while it runs or when it succeeded."""
        return runs.error_of(self._run())

    @property
    def dagster_ui(self) -> str | None:
        """URL of the run's page in the Dagster UI at $DAGSTER_METAFLOW_UI_URL (None when it
        is not set, as Argo's `argo_ui` without its UI URL)."""
        run = self._run()
        return run_page_url(run.run_id) if run is not None else None

    def wait_for_completion(self, check_interval: int = 5, timeout: int | None = None) -> None:
        """Wait until the run ends; TimeoutError after `timeout` seconds."""
        start = time.time()
        while self.is_running:
            if timeout is not None and time.time() - start > timeout:
                raise TimeoutError("Run did not complete within specified timeout.")
            time.sleep(min(check_interval, 1) if check_interval else 1)

    def terminate(self, **kwargs: Any) -> bool:
        """Stop the run and all its step processes; True if it was running and is stopped.

        Parameters
        ----------
        authorize : str, optional
            The deployment's production token: needed by anyone but its deployer (who
            otherwise gets IncorrectProductionToken), as `dagster terminate --authorize`.
        """
        before = self._run()
        run_id = self.dagster_run_id or self.pathspec.split("/")[1]
        code, err = _run_cli(self.deployer, "terminate", run_id=run_id, **kwargs)
        raise_if_refused(err)
        return code == 0 and before is not None and not before.is_finished


class DagsterDeployedFlow(DeployedFlow):
    """A flow deployed to a Dagster instance."""

    TYPE: ClassVar[str | None] = "dagster"

    @property
    def id(self) -> str:
        """`<name>@<DAGSTER_HOME>`: finds the deployment from any process on this machine."""
        home = getattr(self.deployer, "dagster_home", None) or deployments.dagster_home()[0]
        return f"{self.deployer.name}@{os.path.abspath(home)}"

    @property
    def definitions(self) -> dict[str, Any] | None:
        """What `create(only_json=True)` would have deployed (job, file, the definitions'
        text), as Argo's `workflow_template`; None after a real `create`."""
        info = getattr(self.deployer, "additional_info", None) or {}
        shown = info.get("definitions")
        return dict(shown) if isinstance(shown, Mapping) else None

    @classmethod
    def list_deployed_flows(cls, flow_name: str | None = None) -> Iterator[DagsterDeployedFlow]:
        """Every deployment (of `flow_name`) in the instance; a record that cannot be read is
        skipped with a `deployments.CorruptRecordWarning` naming its key and the fix."""
        with deployments.open_instance(None) as instance:
            names = [d.name for d in deployments.list_all(instance, flow_name)]
        for name in names:
            try:
                yield cls.from_deployment(name)
            except Exception:
                continue

    @classmethod
    def from_deployment(cls, identifier: str, metadata: str | None = None) -> DagsterDeployedFlow:
        name, home = _split_identifier(identifier)
        with deployments.open_instance(home) as instance:
            try:
                dep = deployments.get(instance, name)
            except deployments.CorruptRecord as exc:
                raise MetaflowException(str(exc)) from None
            home = instance.root_directory
        if dep is None:
            raise MetaflowException(f"No deployed flow found for: {identifier}")
        param_info = {
            p.name: {
                "name": p.name,
                "python_var_name": p.python_var_name,
                "type": _FAKE_TYPES.get(p.type, "str"),
                "description": p.help,
                "is_required": p.required,
            }
            for p in dep.parameters
        }
        contents = generate_fake_flow_file_contents(
            flow_name=dep.flow_name, param_info=param_info, project_name=dep.project_name
        )
        fake = tempfile.NamedTemporaryFile(suffix=".py", delete=False, mode="w")
        with fake:
            fake.write(contents)
        from metaflow import Deployer

        # commands run as the caller (not as the owner): create, terminate and delete by
        # someone else need the production token, exactly as on the command line
        deployer: Any = Deployer(fake.name, env={"DAGSTER_HOME": home})
        d = deployer.dagster(name=dep.name)
        d.name = dep.name
        d.flow_name = dep.flow_name
        d.metadata = metadata or dep.metadata
        return cls(deployer=d)

    @classmethod
    def get_triggered_run(
        cls, identifier: str, run_id: str, metadata: str | None = None
    ) -> DagsterTriggeredRun:
        flow = cls.from_deployment(identifier, metadata)
        impl: Any = flow.deployer
        content = json.dumps(
            {
                "metadata": impl.metadata,
                "pathspec": f"{impl.flow_name}/{run_id}",
                "name": run_id,
                "dagster_home": impl.dagster_home,
            }
        )
        return DagsterTriggeredRun(deployer=impl, content=content)

    def _record(self) -> deployments.Deployment | None:
        with deployments.open_instance(getattr(self.deployer, "dagster_home", None)) as instance:
            try:
                return deployments.get(instance, self.deployer.name)
            except deployments.CorruptRecord as exc:
                raise MetaflowException(str(exc)) from None

    @property
    def production_token(self) -> str | None:
        dep = self._record()
        return dep.production_token if dep else None

    @property
    def schedule(self) -> dict[str, Any] | None:
        """The deployment's schedule ({"name", "cron", "timezone"}), None if not scheduled."""
        dep = self._record()
        return (dep.automation or {}).get("schedule") if dep else None

    @property
    def triggers(self) -> list[str]:
        """Events the deployment waits for (@trigger names, or `metaflow.<Flow>.end` for
        @trigger_on_finish); empty if not triggered."""
        dep = self._record()
        return list((dep.automation or {}).get("triggers", [])) if dep else []

    @property
    def is_scheduled(self) -> bool:
        return self.schedule is not None

    @property
    def is_triggered(self) -> bool:
        return bool(self.triggers)

    def _start(self, verb: str, **kwargs: Any) -> DagsterTriggeredRun:
        impl: Any = self.deployer
        fifo: Any = temporary_fifo()
        with fifo as (attribute_file_path, attribute_file_fd):
            command = _command(impl, verb, deployer_attribute_file=attribute_file_path, **kwargs)
            pid = impl.spm.run_command(
                command, env=impl.env_vars, cwd=impl.cwd, show_output=impl.show_output
            )
            command_obj: Any = impl.spm.get(pid)
            content = handle_timeout(attribute_file_fd, command_obj, impl.file_read_timeout)
            command_obj.sync_wait()
            if command_obj.process.returncode == 0:
                return DagsterTriggeredRun(deployer=impl, content=content)
        raise Exception(f"Error running `dagster {verb}` for {impl.name} ({impl.flow_file})")

    def trigger(self, **kwargs: Any) -> DagsterTriggeredRun:
        """Start a run (returns at once); keyword arguments are the flow's parameters."""
        return self._start("trigger", **kwargs)

    def resume(self, **kwargs: Any) -> DagsterTriggeredRun:
        """Start a run that clones the successful tasks of `origin_run_id` and runs the rest
        (`step_to_rerun` and everything after it run again); other keyword arguments override
        parameters of the origin run."""
        return self._start("resume", **kwargs)

    def delete(self, **kwargs: Any) -> bool:
        """Remove the deployment (its runs stay in the instance; runs in progress go on).

        Parameters
        ----------
        authorize : str, optional
            The deployment's production token: needed by anyone but its deployer (who
            otherwise gets IncorrectProductionToken), as `dagster delete --authorize`.
        """
        code, err = _run_cli(self.deployer, "delete", **kwargs)
        raise_if_refused(err)
        return code == 0
