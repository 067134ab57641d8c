"""Parameter values as the start op's Config fields take them, from any source (typed CLI
options, `--run-param` text, `METAFLOW_RUN_*` variables, an origin run, event payloads),
and the run config of a run built from them.

Imported by the sensors in the Dagster daemon: Metaflow is imported only where used."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

_TRUE = ("true", "1", "yes", "y", "t")
_FALSE = ("false", "0", "no", "n", "f")


def config_value(typ: str, value: Any) -> Any:
    """`value` converted for a Config field of Metaflow parameter type `typ` (JSON as text).
    Raises ValueError/TypeError when it is not a valid value of that type."""
    if value is None:
        return None
    if typ == "json":
        if isinstance(value, str):
            json.loads(value)
            return value
        return json.dumps(value)
    if typ == "bool":
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in _TRUE + _FALSE:
                raise ValueError(value)
            return low in _TRUE
        return bool(value)
    if typ == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if typ == "float":
        return float(value)
    return (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, (dict, list))
        else str(value)
    )


def checked_value(info: Any, value: Any, origin: str) -> Any:
    """`config_value` for parameter `info` (a `deployments.ParameterInfo`), refused in one
    line naming where the value came from."""
    from .errors import DagsterMetaflowException

    try:
        return config_value(info.type, value)
    except (TypeError, ValueError) as exc:
        raise DagsterMetaflowException(
            f"parameter {info.name!r} ({origin}): {value!r} is not a valid {info.type}"
        ) from exc


def run_config(
    dep: Any,
    options: Mapping[str, Any],
    run_params: Sequence[str],
    base: Mapping[str, Any] | None = None,
    use_env: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run config, explicitly given values) of a run of deployment `dep`, from typed options
    (`options`, by Python name), --run-param name=value, and METAFLOW_RUN_<NAME> variables
    (the prefix of `flow.py run`), over `base` (an origin run's values)."""
    values: dict[str, Any] = dict(base or {})
    given = _given_values(dep, options, run_params)
    if use_env:
        for info in dep.parameters:
            var = "METAFLOW_RUN_" + info.name.upper().replace("-", "_")
            if info.name not in given and info.name not in values and var in os.environ:
                given[info.name] = checked_value(info, os.environ[var], var)
    values.update(given)
    missing = [p.name for p in dep.parameters if p.required and values.get(p.name) is None]
    if missing:
        from .errors import DagsterMetaflowException

        name = missing[0]
        raise DagsterMetaflowException(
            f"missing required parameter {name!r}: pass --{name} VALUE, --run-param {name}=VALUE "
            f"or set METAFLOW_RUN_{name.upper().replace('-', '_')}"
        )
    cfg = {k: v for k, v in values.items() if v is not None}
    from .runtime.ids import op_config

    return (op_config(dep.start_op, cfg) if dep.parameters else {}), given


def _given_values(
    dep: Any, options: Mapping[str, Any], run_params: Sequence[str]
) -> dict[str, Any]:
    """Values given on the command line: typed options, then --run-param."""
    from metaflow import parameters as mf_parameters

    from .errors import DagsterMetaflowException

    infos = {p.name: p for p in dep.parameters}
    given: dict[str, Any] = {}
    for info in dep.parameters:
        raw = options.get(info.name.replace("-", "_").lower())
        if isinstance(raw, mf_parameters.DelayedEvaluationParameter):
            raw = raw(return_str=True)
        if raw is not None:
            given[info.name] = checked_value(info, raw, f"--{info.name}")
    for item in run_params:
        key, sep, text = item.partition("=")
        if not sep:
            raise DagsterMetaflowException(f"--run-param {item!r}: expected name=value")
        found = infos.get(key) or infos.get(key.replace("_", "-"))
        if found is None:
            known = ", ".join(sorted(infos)) or "none"
            raise DagsterMetaflowException(
                f"--run-param {key!r}: the flow has no such parameter (parameters: {known})"
            )
        given[found.name] = checked_value(found, text, "--run-param")
    return given


def origin_parameters(flow_datastore: Any, dep: Any, origin_run_id: str) -> dict[str, Any]:
    """Parameter values of a run, read from its _parameters task (Metaflow's datastore)."""
    from .errors import DagsterMetaflowException
    from .runtime.ids import PARAMS_STEP

    try:
        stores = list(flow_datastore.get_task_datastores(run_id=origin_run_id, steps=[PARAMS_STEP]))
    except Exception:
        stores = []
    if not stores:
        raise DagsterMetaflowException(
            f"--origin-run-id: no run {dep.flow_name}/{origin_run_id} in the datastore "
            f"{getattr(flow_datastore, 'datastore_root', None) or ''}".rstrip()
            + f"; list this deployment's runs with `python {os.path.basename(sys.argv[0])} "
            "dagster list-runs`"
        )
    ds = stores[0]
    values = {}
    for info in dep.parameters:
        if info.python_var_name in ds:
            values[info.name] = checked_value(info, ds[info.python_var_name], "origin run")
    return values
