"""What a deployment is: a record in the Dagster instance, keyed by the Dagster job name.

`python flow.py dagster create` compiles a definitions file and records it here, so that any
process that reaches the same Dagster instance (same DAGSTER_HOME, or the same Postgres
storage) can trigger, list, resume or delete it by name. Records live in the instance's
key-value store (`run_storage` cursor values, present in every Dagster storage), as JSON:

    dagster_metaflow/deployments          JSON list of deployment names
    dagster_metaflow/deployment/<name>    JSON of one `Deployment`

Next to the instance's dagster.yaml, `dagster_metaflow_workspace.yaml` lists the
definitions file of every deployment recorded from this machine, so that
`dagster dev -w $DAGSTER_HOME/dagster_metaflow_workspace.yaml` shows them all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import DagsterInstance

INDEX_KEY = "dagster_metaflow/deployments"
RECORD_PREFIX = "dagster_metaflow/deployment/"
WORKSPACE_FILE = "dagster_metaflow_workspace.yaml"
DEFAULT_HOME = "~/.dagster_metaflow"


class DeploymentError(Exception):
    """A deployment that does not exist or cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ParameterInfo:
    """A flow Parameter as `trigger` needs it (and as Metaflow's fake-flow generator reads it)."""

    name: str  # Metaflow name; also the key in the start op's run config (field alias)
    python_var_name: str
    type: str  # int, float, bool, str, json
    required: bool
    help: str = ""


@dataclass(frozen=True)
class Deployment:
    """One compiled flow registered in a Dagster instance."""

    name: str  # Dagster job name; the deployer's identifier
    flow_name: str
    flow_file: str  # absolute path at create time
    definitions_file: str  # absolute path of the generated file
    owner: str
    production_token: str
    start_op: str = "op_start"
    parameters: tuple[ParameterInfo, ...] = ()
    project_name: str | None = None
    branch_name: str | None = None
    metadata: str = ""  # Metaflow metadata_str of the deploying process
    tool_version: str = ""
    flow_fingerprint: str = ""  # sha256 of the flow file compiled (also in the generated file)
    code_package: dict[str, str] = field(default_factory=dict)  # url, sha, metadata
    # @schedule / @trigger / @trigger_on_finish / @exit_hook as deployed: {"schedule": {cron,
    # timezone, name}, "sensor": name, "triggers": [event names], "exit_hooks": {...}}
    automation: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def location_name(self) -> str:
        """Code location name Dagster gives `-f <definitions file>` (`dagster dev`, daemon)."""
        return os.path.basename(self.definitions_file)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        data = json.loads(text)
        data["parameters"] = tuple(ParameterInfo(**p) for p in data.get("parameters", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def dagster_home() -> tuple[str, bool]:
    """The instance directory and whether it was chosen for the user (DAGSTER_HOME unset)."""
    env = os.environ.get("DAGSTER_HOME")
    if env:
        return os.path.abspath(os.path.expanduser(env)), False
    return os.path.abspath(os.path.expanduser(DEFAULT_HOME)), True


def ensure_home(home: str) -> None:
    """Create an instance directory with a dagster.yaml, as `dagster dev` would need one."""
    os.makedirs(home, exist_ok=True)
    cfg = os.path.join(home, "dagster.yaml")
    if not os.path.exists(cfg):
        with open(cfg, "w", encoding="utf-8") as f:
            f.write("telemetry:\n  enabled: false\n")


@contextmanager
def open_instance(home: str | None = None) -> Iterator[DagsterInstance]:
    """The Dagster instance deployments live in (DAGSTER_HOME, else ~/.dagster_metaflow)."""
    from dagster import DagsterInstance

    home = home or dagster_home()[0]
    ensure_home(home)
    # a new SQLite instance creates its schema when first opened: two processes doing that
    # at once leave it broken (two alembic heads), so opening is serialised per home
    with _home_lock(home):
        instance = DagsterInstance.from_config(home)
    with instance:
        yield instance


@contextmanager
def _home_lock(home: str) -> Iterator[None]:
    import fcntl

    with open(os.path.join(home, ".dagster_metaflow.lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _get(instance: DagsterInstance, key: str) -> str | None:
    value = instance.run_storage.get_cursor_values({key}).get(key)
    return value or None


def list_names(instance: DagsterInstance) -> list[str]:
    text = _get(instance, INDEX_KEY)
    return sorted(json.loads(text)) if text else []


def get(instance: DagsterInstance, name: str) -> Deployment | None:
    text = _get(instance, RECORD_PREFIX + name)
    return Deployment.from_json(text) if text else None


def require(instance: DagsterInstance, name: str) -> Deployment:
    dep = get(instance, name)
    if dep is None:
        known = ", ".join(list_names(instance)) or "none"
        raise DeploymentError(
            f"no deployment named {name!r} in the Dagster instance at "
            f"{instance.root_directory} (deployed: {known}); run `python <flow>.py dagster create` first"
        )
    return dep


def _set(instance: DagsterInstance, key: str, value: str) -> None:
    # one key per call: the SQL storages insert a batch as a whole and, when any key
    # exists, only update the existing ones
    instance.run_storage.set_cursor_values({key: value})


def put(instance: DagsterInstance, dep: Deployment) -> None:
    _set(instance, RECORD_PREFIX + dep.name, dep.to_json())
    _set(instance, INDEX_KEY, json.dumps(sorted(set(list_names(instance)) | {dep.name})))
    _write_workspace(instance)


def remove(instance: DagsterInstance, name: str) -> list[str]:
    """Forget a deployment; its schedule and sensor are stopped (returns their names)."""
    dep = get(instance, name)
    stopped = _stop_instigators(instance, dep) if dep is not None else []
    # the key-value store has no delete: an empty value means "no record"
    _set(instance, RECORD_PREFIX + name, "")
    _set(instance, INDEX_KEY, json.dumps(sorted(set(list_names(instance)) - {name})))
    _write_workspace(instance)
    return stopped


def instigator_names(dep: Deployment) -> list[str]:
    auto = dep.automation or {}
    return [n for n in ((auto.get("schedule") or {}).get("name"), auto.get("sensor")) if n]


def instigator_status(instance: DagsterInstance, dep: Deployment) -> dict[str, str]:
    """Stored state (RUNNING/STOPPED/...) of the deployment's schedule and sensor; a name
    without stored state runs by default once a daemon loads the deployment."""
    out = {n: "RUNNING (default; not evaluated yet)" for n in instigator_names(dep)}
    for state in _own_states(instance, dep):
        # DECLARED_IN_CODE: the status is the code's default_status, RUNNING here
        status = state.status.value
        out[state.name] = "RUNNING (default)" if status == "DECLARED_IN_CODE" else status
    return out


def _own_states(instance: DagsterInstance, dep: Deployment) -> list[Any]:
    names = set(instigator_names(dep))
    return [
        s
        for s in instance.all_instigator_state()
        if s.name in names and s.origin.repository_origin.code_location_origin.location_name == dep.location_name
    ]


def forget_instigators(instance: DagsterInstance, dep: Deployment) -> None:
    """Drop stored schedule/sensor states (status and cursor) of this deployment's names."""
    for state in _own_states(instance, dep):
        instance.delete_instigator_state(state.instigator_origin_id, state.selector_id)


def _stop_instigators(instance: DagsterInstance, dep: Deployment) -> list[str]:
    from ._dagster_private import InstigatorStatus

    for state in _own_states(instance, dep):
        instance.update_instigator_state(state.with_status(InstigatorStatus.STOPPED))
    return sorted(instigator_names(dep))


def list_all(instance: DagsterInstance, flow_name: str | None = None) -> list[Deployment]:
    out = []
    for name in list_names(instance):
        dep = get(instance, name)
        if dep is not None and (flow_name is None or dep.flow_name == flow_name):
            out.append(dep)
    return out


def workspace_path(instance: DagsterInstance) -> str:
    return os.path.join(instance.root_directory, WORKSPACE_FILE)


def _write_workspace(instance: DagsterInstance) -> None:
    """workspace.yaml with every deployment whose definitions file exists on this machine."""
    files = sorted(
        {d.definitions_file for d in list_all(instance) if Path(d.definitions_file).exists()}
    )
    lines = ["# Written by dagster-metaflow: every deployment of this instance.", "load_from:"]
    lines += [f"  - python_file: {json.dumps(f)}" for f in files]
    if not files:
        lines[-1] = "load_from: []"
    path = workspace_path(instance)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
