"""What a deployment is: a record in the Dagster instance, keyed by the Dagster job name.

`python flow.py dagster create` compiles a definitions file and records it here, so that any
process that reaches the same Dagster instance (same DAGSTER_HOME, or the same Postgres
storage) can trigger, list, resume or delete it by name. Records live in the instance's
key-value store (`run_storage` cursor values, present in every Dagster storage), as JSON:

    dagster_metaflow/deployment/<name>    JSON of one `Deployment` ("" once deleted)
    dagster_metaflow/deleted/<name>       the last record of a deleted deployment: who may
                                          still terminate its runs
    dagster_metaflow/deployments          JSON list of the names (derived; older versions read it)

One key per deployment, so concurrent `create`s of different flows never overwrite each
other: deployments are listed by key prefix (SQL storages), the index is rewritten from that
listing under a file lock, and only a storage that cannot list keys reads the index.
A record that cannot be read (corrupt, incomplete) raises `CorruptRecord`, one line naming
the key and the fix; listings skip it with a warning.

Next to the instance's dagster.yaml, `dagster_metaflow_workspace.yaml` lists the
definitions file of every deployment recorded from this machine, so that
`dagster dev -w $DAGSTER_HOME/dagster_metaflow_workspace.yaml` shows them all.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import DagsterInstance

INDEX_KEY = "dagster_metaflow/deployments"
RECORD_PREFIX = "dagster_metaflow/deployment/"
DELETED_PREFIX = "dagster_metaflow/deleted/"
WORKSPACE_FILE = "dagster_metaflow_workspace.yaml"
DEFAULT_HOME = "~/.dagster_metaflow"


class DeploymentError(Exception):
    """A deployment that does not exist or cannot be used; the message says what to do."""


class CorruptRecord(DeploymentError):
    """A deployment record that cannot be read. `partial` keeps what could be read of it
    (owner, production token): enough to authorize overwriting or deleting it."""

    def __init__(self, key: str, root: str, why: str, partial: Deployment | None = None) -> None:
        super().__init__(
            f"deployment record {key!r} in the Dagster instance at {root} is corrupt ({why}): "
            "`python <flow>.py dagster create --force` overwrites it, "
            "`python <flow>.py dagster delete` removes it"
        )
        self.key = key
        self.partial = partial


class CorruptRecordWarning(UserWarning):
    """A listing skipped a deployment record it could not read."""


# fields a record cannot do without (the others have defaults)
REQUIRED_FIELDS = (
    "name",
    "flow_name",
    "flow_file",
    "definitions_file",
    "owner",
    "production_token",
)


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


def parse_record(key: str, text: str, root: str) -> Deployment:
    """The `Deployment` stored under `key`; `CorruptRecord` (one line) if it cannot be read."""
    name = key[len(RECORD_PREFIX) :] if key.startswith(RECORD_PREFIX) else key
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CorruptRecord(key, root, f"not JSON: {getattr(exc, 'msg', exc)}") from None
    if not isinstance(data, dict):
        raise CorruptRecord(key, root, f"a JSON {type(data).__name__}, not an object")
    partial = _partial(name, data)
    missing = [f for f in REQUIRED_FIELDS if not isinstance(data.get(f), str)]
    if missing:
        raise CorruptRecord(key, root, f"missing {', '.join(missing)}", partial)
    if data["name"] != name:
        raise CorruptRecord(key, root, f"it holds deployment {data['name']!r}", partial)
    try:
        return Deployment.from_json(text)
    except (TypeError, ValueError, AttributeError) as exc:
        raise CorruptRecord(key, root, f"{type(exc).__name__}: {exc}", partial) from None


def _partial(name: str, data: dict[str, Any]) -> Deployment | None:
    """What authorization needs of an unreadable record, if it still says who owns it."""
    owner, token = data.get("owner"), data.get("production_token")
    if not isinstance(owner, str) or not isinstance(token, str):
        return None
    text = {k: v if isinstance(v, str) else None for k, v in data.items()}
    return Deployment(
        name=name,
        flow_name=text.get("flow_name") or "",
        flow_file="",
        definitions_file="",
        owner=owner,
        production_token=token,
        project_name=text.get("project_name"),
        branch_name=text.get("branch_name"),
    )


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


def _scan(instance: DagsterInstance, prefix: str) -> dict[str, str] | None:
    """Every key under `prefix` with its value; None when the run storage is not one of
    Dagster's SQL storages (its public API reads keys by name only)."""
    from ._dagster_private import KeyValueStoreTable, SqlRunStorage, db_select

    storage: Any = instance.run_storage
    for _ in range(3):  # a LegacyRunStorage wraps the DagsterStorage's run storage
        if isinstance(storage, SqlRunStorage):
            break
        storage = getattr(getattr(storage, "_storage", None), "run_storage", None)
    if not isinstance(storage, SqlRunStorage):
        return None
    col = KeyValueStoreTable.c
    rows = storage.fetchall(db_select([col.key, col.value]).where(col.key.like(prefix + "%")))
    # LIKE treats `_` as a wildcard (and SQLite ignores case): keep the exact prefix only
    return {r["key"]: r["value"] for r in rows if r["key"].startswith(prefix)}


def _index(instance: DagsterInstance) -> list[str]:
    """Names in the index key (read only where the storage cannot list keys by prefix)."""
    text = _get(instance, INDEX_KEY)
    try:
        names = json.loads(text) if text else []
    except ValueError:
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _records(instance: DagsterInstance) -> dict[str, str]:
    """Record key -> text of every deployment not deleted."""
    found = _scan(instance, RECORD_PREFIX)
    if found is None:
        keys = {RECORD_PREFIX + n for n in _index(instance)}
        found = dict(instance.run_storage.get_cursor_values(keys)) if keys else {}
    return {k: v for k, v in found.items() if v}


def _warn(message: str) -> None:
    warnings.warn(message, CorruptRecordWarning, stacklevel=3)


def _quiet(message: str) -> None:
    pass


def list_all(
    instance: DagsterInstance,
    flow_name: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Deployment]:
    """Every readable deployment (of `flow_name`), by name; an unreadable record is skipped
    with `warn` (default: a CorruptRecordWarning) instead of failing the whole listing."""
    out = []
    for key, text in sorted(_records(instance).items()):
        try:
            dep = parse_record(key, text, instance.root_directory)
        except CorruptRecord as exc:
            (warn or _warn)(f"skipped {exc}")
            continue
        if flow_name is None or dep.flow_name == flow_name:
            out.append(dep)
    return out


def list_names(instance: DagsterInstance, warn: Callable[[str], None] | None = None) -> list[str]:
    return [d.name for d in list_all(instance, warn=warn)]


def get(instance: DagsterInstance, name: str) -> Deployment | None:
    """The deployment named `name` (None if there is none); CorruptRecord if unreadable."""
    key = RECORD_PREFIX + name
    text = _get(instance, key)
    return parse_record(key, text, instance.root_directory) if text else None


def deleted(instance: DagsterInstance, name: str) -> Deployment | None:
    """The last record of a deleted deployment (None if unknown or unreadable): its runs
    keep their owner and production token after `delete`."""
    text = _get(instance, DELETED_PREFIX + name)
    try:
        return parse_record(RECORD_PREFIX + name, text, instance.root_directory) if text else None
    except CorruptRecord:
        return None


def require(instance: DagsterInstance, name: str) -> Deployment:
    dep = get(instance, name)
    if dep is None:
        known = ", ".join(list_names(instance, warn=_quiet)) or "none"
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
    """Record `dep` under its own key (a concurrent `create` of another deployment writes
    another key), then rewrite the derived index and workspace file."""
    _set(instance, RECORD_PREFIX + dep.name, dep.to_json())
    _refresh(instance, add=dep.name)


def record(instance: DagsterInstance, dep: Deployment, replaces: Deployment | None) -> None:
    """Record a created deployment. One created again after `delete` (`replaces` is None):
    its schedule and sensor start afresh (delete left them STOPPED, and a stored state
    overrides default_status)."""
    if replaces is None:
        forget_instigators(instance, dep)
    put(instance, dep)


def remove(instance: DagsterInstance, name: str) -> list[str]:
    """Forget a deployment, also one whose record is corrupt; its schedule and sensor are
    stopped (returns their names). Its last record stays as a tombstone (`deleted`)."""
    try:
        dep = get(instance, name)
        last = dep
    except CorruptRecord as exc:
        dep, last = None, exc.partial
    stopped = _stop_instigators(instance, dep) if dep is not None else []
    if last is not None:
        _set(instance, DELETED_PREFIX + name, last.to_json())
    # the key-value store has no delete: an empty value means "no record"
    _set(instance, RECORD_PREFIX + name, "")
    _refresh(instance, drop=name)
    return stopped


def _refresh(instance: DagsterInstance, add: str | None = None, drop: str | None = None) -> None:
    """Rewrite the index and the workspace file from the records, under the home's file
    lock: the last writer on this machine writes what every record says."""
    with _home_lock(instance.root_directory):
        names = set(list_names(instance, warn=_quiet)) | ({add} if add else set())
        names.discard(drop or "")
        _set(instance, INDEX_KEY, json.dumps(sorted(names)))
        _write_workspace(instance)


def instigator_names(dep: Deployment) -> list[str]:
    auto = dep.automation or {}
    notify = (auto.get("notifications") or {}).get("sensors") or []
    return [n for n in ((auto.get("schedule") or {}).get("name"), auto.get("sensor"), *notify) if n]


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
        if s.name in names
        and s.origin.repository_origin.code_location_origin.location_name == dep.location_name
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


def workspace_path(instance: DagsterInstance) -> str:
    return os.path.join(instance.root_directory, WORKSPACE_FILE)


def _write_workspace(instance: DagsterInstance) -> None:
    """workspace.yaml with every deployment whose definitions file exists on this machine."""
    files = sorted(
        {
            d.definitions_file
            for d in list_all(instance, warn=_quiet)
            if Path(d.definitions_file).exists()
        }
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
