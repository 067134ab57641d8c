"""Dagster's distributed executors with the deployment's settings as defaults.

`create --executor celery --executor-config '{"broker": ...}'` must bake the broker into the
job (so `trigger`, schedules and sensors need no run config) and still let a launch override
it in run config (`execution: {config: {broker: ...}}`), as Dagster allows for an
unconfigured executor. `ExecutorDefinition.configured` with a plain dict would freeze the
values; here the executor keeps its own config schema, with the deployment's values as the
fields' defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import ExecutorDefinition, Field


def executor_with_defaults(executor_def: ExecutorDefinition, defaults: Mapping[str, Any]) -> ExecutorDefinition:
    """`executor_def` whose config fields named in `defaults` default to those values."""
    if not defaults:
        return executor_def
    fields = dict(executor_def.config_schema.config_type.fields)  # type: ignore[union-attr]
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise ValueError(
            f"executor {executor_def.name!r} has no config field {', '.join(map(repr, unknown))} "
            f"(its fields: {', '.join(sorted(fields))})"
        )
    for name, value in defaults.items():
        old = fields[name]
        fields[name] = Field(
            old.config_type,
            default_value=value,
            is_required=False,
            description=old.description,
        )
    return executor_def.configured(dict, config_schema=fields, name=executor_def.name)
