"""`dagster_metaflow.MetaflowFlowComponent`: a Metaflow flow in a Dagster project (`dg`).

    # defs/flows/train/defs.yaml   (dg scaffold defs dagster_metaflow.MetaflowFlowComponent
    type: dagster_metaflow.MetaflowFlowComponent   #  flows/train --flow-file train_flow.py)
    attributes:
      flow_file: train_flow.py

The attributes are `python flow.py dagster create`'s options. Every attribute is checked by
its resolver, so `dg check defs` names `defs.yaml:<line> - attributes.<field>` with one line
(dagster widens every field to `T | str` for templates, so pydantic types or constraints
would let bad values through or fail without a location). `build_defs` returns the
Definitions `create` would have written, compiled once per change (`component_cache`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import dagster as dg
from pydantic import BaseModel, Field

from . import component_cache
from .naming import validate_job_name

# `create --executor` / `--identity` choices (cli.EXECUTORS, cli.IDENTITIES: the CLI
# imports Metaflow, which loading a component must not; a unit test keeps them equal)
EXECUTORS = ("threads", "multiprocess", "forkserver", "in_process", "celery", "k8s")
IDENTITIES = ("production", "user")
DECORATOR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
ATTRIBUTE_SPLIT = re.compile(r",(?=[\s\w]+=)")  # Metaflow's own split of `deco:a=1,b=2`
TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


# -- resolvers: one per attribute, every one raising ValueError("attributes.<f>: ...") ---


def _fail(ctx: dg.ResolutionContext, message: str) -> ValueError:
    return ValueError(f"{'.'.join(map(str, ctx.path))}: {message}")


def _flow_file(ctx: dg.ResolutionContext, value: Any) -> str:
    """The flow file, relative to the folder of defs.yaml; it must exist."""
    value = ctx.resolve_value(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(ctx, f"expected the path of a flow file, got {value!r}")
    folder = dg.ComponentLoadContext.from_resolution_context(ctx).path
    path = (Path(folder) / value).resolve()
    if not path.is_file():
        raise _fail(ctx, f"no such flow file {path}")
    return str(path)


def _optional_str(ctx: dg.ResolutionContext, value: Any) -> str | None:
    value = ctx.resolve_value(value)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _fail(ctx, f"expected a string, got {value!r}")
    return value


def _job_name(ctx: dg.ResolutionContext, value: Any) -> str | None:
    """`create --name`: a valid Dagster job name (default: from the flow)."""
    name = _optional_str(ctx, value)
    problem = validate_job_name(name) if name is not None else None
    if problem:
        raise _fail(ctx, problem)
    return name


def _str_list(ctx: dg.ResolutionContext, value: Any) -> list[str]:
    value = ctx.resolve_value(value)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(ctx, f"expected a list of non-empty strings, got {value!r}")
    return list(value)


def _decorator_specs(ctx: dg.ResolutionContext, value: Any) -> list[str]:
    """`create --with`: `name` or `name:attr=value,attr=value`, as Metaflow parses them."""
    specs = _str_list(ctx, value)
    for spec in specs:
        name, _, attrs = spec.partition(":")
        bad_attrs = attrs and any("=" not in a for a in ATTRIBUTE_SPLIT.split(attrs))
        if not DECORATOR_NAME.match(name) or bad_attrs or (":" in spec and not attrs):
            raise _fail(
                ctx, f"{spec!r} is not a decorator spec: use 'name' or 'name:attr=value,...'"
            )
    return specs


def _artifact_names(ctx: dg.ResolutionContext, value: Any) -> list[str]:
    """Artifact names (Python identifiers) to declare as assets."""
    names = _str_list(ctx, value)
    for name in names:
        if not name.isidentifier() or name.startswith("_"):
            raise _fail(ctx, f"{name!r} is not an artifact name")
    return names


def _choice(choices: tuple[str, ...]) -> Any:
    def resolve(ctx: dg.ResolutionContext, value: Any) -> str:
        value = ctx.resolve_value(value)
        if value not in choices:
            raise _fail(ctx, f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return resolve


def _positive_int(ctx: dg.ResolutionContext, value: Any) -> int | None:
    """An integer >= 1 (a plain int field takes no `ge=1` once widened to `int | str`)."""
    value = ctx.resolve_value(value)
    if value is None:
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise _fail(ctx, f"expected an integer >= 1, got {value!r}")
    return int(text)


def _bool(ctx: dg.ResolutionContext, value: Any) -> bool:
    value = ctx.resolve_value(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise _fail(ctx, f"expected true or false, got {value!r}")


def _int(ctx: dg.ResolutionContext, value: Any) -> int | None:
    """Any integer (a run priority may be negative)."""
    value = ctx.resolve_value(value)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(str(value).strip())
    except ValueError:
        raise _fail(ctx, f"expected an integer, got {value!r}") from None


def _notify(ctx: dg.ResolutionContext, value: Any) -> dict[str, Any] | None:
    """`create --notify-*` as a mapping (on_error, on_success, slack_webhook_url,
    pager_duty_integration_key, incident_io_api_key, incident_io_alert_source_config_id,
    incident_io_metadata), checked as `create` checks the options."""
    from .errors import CompileError
    from .notifications import SECRET_FIELDS, notifications_from_options

    value = ctx.resolve_value(value)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(ctx, f"expected a mapping of notification options, got {value!r}")
    metadata = value.get("incident_io_metadata") or {}
    if not isinstance(metadata, dict):
        raise _fail(ctx, f"incident_io_metadata: expected a mapping, got {metadata!r}")
    options = {**value, "incident_io_metadata": [f"{k}={v}" for k, v in metadata.items()]}
    for flag in ("on_error", "on_success"):
        if flag in options:
            options[flag] = _bool(ctx, options[flag])
    try:
        notifications = notifications_from_options(**options)
    except TypeError as exc:
        raise _fail(ctx, f"unknown notification option: {exc}") from None
    except CompileError as exc:
        raise _fail(ctx, str(exc)) from None
    literal = notifications.literal_secrets if notifications else ()
    if literal:
        raise _fail(
            ctx,
            f"{SECRET_FIELDS[literal[0]]}: give env:NAME (read where the message is sent); a value "
            "here would be written into the cached definitions file and the compile command line",
        )
    return options


def _executor_config(ctx: dg.ResolutionContext, value: Any) -> dict[str, Any] | None:
    """`create --executor-config`: a mapping, or its JSON text."""
    value = ctx.resolve_value(value)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise _fail(ctx, f"not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise _fail(ctx, f"expected a mapping of the executor's config fields, got {value!r}")
    return dict(value)


def _configs(ctx: dg.ResolutionContext, value: Any) -> dict[str, str]:
    """Metaflow configs (`--config-value NAME VALUE`): a value is JSON text, or any YAML
    value (written as JSON)."""
    value = ctx.resolve_value(value)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(ctx, f"expected a mapping of config name to value, got {value!r}")
    out = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise _fail(ctx, f"{name!r} is not a config name")
        out[name] = item if isinstance(item, str) else json.dumps(item, sort_keys=True)
    return out


def _resolver(fn: Any, field_type: Any, description: str, yaml_name: str | None = None) -> Any:
    """A resolver that sees the raw value (`inject_before_resolve=False`): a template that
    renders to a non-string would otherwise bypass `fn`."""
    return dg.Resolver(
        fn,
        model_field_type=field_type,
        model_field_name=yaml_name,  # `with`: errors then point at its own line
        description=description,
        inject_before_resolve=False,
    )


# -- scaffolding: `dg scaffold defs dagster_metaflow.MetaflowFlowComponent PATH --flow-file F`


class FlowScaffoldParams(BaseModel):
    """`dg scaffold defs ... --flow-file FILE` (default: flow.py)."""

    flow_file: str | None = None


STARTER_FLOW = '''\
from metaflow import FlowSpec, step


class {name}(FlowSpec):
    """A starter flow: replace its steps with yours."""

    @step
    def start(self):
        self.message = "hello"
        self.next(self.end)

    @step
    def end(self):
        print(self.message)


if __name__ == "__main__":
    {name}()
'''


def starter_flow_class(flow_file: Path, folder: Path) -> str:
    """`train_flow.py` -> TrainFlow; `flow.py` in flows/train -> TrainFlow."""
    stem = flow_file.stem if flow_file.stem.lower() != "flow" else folder.name
    words = [w for w in re.split(r"[^A-Za-z0-9]+", stem) if w]
    name = "".join(w[:1].upper() + w[1:] for w in words) or "My"
    name = name if name.endswith("Flow") else name + "Flow"
    return name if name.isidentifier() else f"F{name}"


class MetaflowFlowScaffolder(dg.Scaffolder[FlowScaffoldParams]):
    """Writes defs.yaml with `flow_file`, and a starter flow there if none exists yet."""

    @classmethod
    def get_scaffold_params(cls) -> type[FlowScaffoldParams]:
        return FlowScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[FlowScaffoldParams]) -> None:
        flow_file = (request.params.flow_file if request.params else None) or "flow.py"
        dg.scaffold_component(request, {"flow_file": flow_file})
        folder = Path(request.target_path)
        target = (folder / flow_file).resolve()
        # only inside the new folder: an existing flow elsewhere is referenced, never written
        if not target.exists() and target.is_relative_to(folder.resolve()):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(STARTER_FLOW.format(name=starter_flow_class(target, folder)))


# -- the component ---------------------------------------------------------------------


@dg.scaffold_with(MetaflowFlowScaffolder)
class MetaflowFlowComponent(dg.Component, dg.Resolvable, dg.Model):
    """A Metaflow flow compiled to a Dagster job (`python flow.py dagster create`'s options)."""

    flow_file: Annotated[
        str, _resolver(_flow_file, str, "The flow file, relative to this defs.yaml's folder.")
    ]
    name: Annotated[
        str | None,
        _resolver(_job_name, str, "Dagster job name; default: the flow name (create --name)."),
    ] = None
    tags: Annotated[
        list[str], _resolver(_str_list, list[str], "Metaflow tags of every run (--tag).")
    ] = Field(default_factory=list)
    namespace: Annotated[
        str | None,
        _resolver(_optional_str, str, "Namespace the steps run in (--namespace)."),
    ] = None
    with_: Annotated[
        list[str],
        _resolver(_decorator_specs, list[str], "Step decorators for every step (--with).", "with"),
    ] = Field(default_factory=list, alias="with")
    executor: Annotated[
        str, _resolver(_choice(EXECUTORS), str, f"One of {', '.join(EXECUTORS)}.")
    ] = "threads"
    executor_config: Annotated[
        dict[str, Any] | None,
        _resolver(_executor_config, dict[str, Any], "The executor's own config (celery, k8s)."),
    ] = None
    max_workers: Annotated[
        int, _resolver(_positive_int, int, "Steps running at once in one run.")
    ] = 16
    workflow_timeout: Annotated[
        int | None, _resolver(_positive_int, int, "Stop a run after this many seconds.")
    ] = None
    config: Annotated[
        dict[str, str],
        _resolver(_configs, dict[str, Any], "Metaflow config values (--config-value)."),
    ] = Field(default_factory=dict)
    branch: Annotated[str | None, _resolver(_optional_str, str, "@project branch (--branch).")] = (
        None
    )
    production: Annotated[
        bool, _resolver(_bool, bool, "@project production branch (--production).")
    ] = False
    identity: Annotated[
        str, _resolver(_choice(IDENTITIES), str, "Runs run as: production token or user.")
    ] = "production"
    assets: Annotated[
        list[str], _resolver(_artifact_names, list[str], "Artifacts declared as assets.")
    ] = Field(default_factory=list)
    automation_condition: Annotated[
        bool, _resolver(_bool, bool, "Materialize the assets when their upstreams update.")
    ] = False
    workflow_priority: Annotated[
        int | None, _resolver(_int, int, "The runs' dagster/priority (--workflow-priority).")
    ] = None
    workflow_title: Annotated[
        str | None, _resolver(_optional_str, str, "Shown first in the job's description.")
    ] = None
    workflow_description: Annotated[
        str | None, _resolver(_optional_str, str, "The job's description; default: docstring.")
    ] = None
    auto_emit_events: Annotated[
        bool, _resolver(_bool, bool, "Publish metaflow.<Flow>.end when a run succeeds.")
    ] = True
    notify: Annotated[
        dict[str, Any] | None,
        _resolver(_notify, dict[str, Any], "Run-end notifications (create --notify-* options)."),
    ] = None

    def top_level_options(self) -> list[str]:
        """Metaflow's top-level options for these attributes (configs, @project)."""
        argv: list[str] = []
        for name, value in sorted(self.config.items()):
            argv += ["--config-value", name, value]
        if self.branch:
            argv += ["--branch", self.branch]
        if self.production:
            argv.append("--production")
        return argv

    def compile_request(self) -> dict[str, Any]:
        """The `compile-component` request: what `create`'s options would say."""
        options: dict[str, Any] = {
            "tags": self.tags,
            "namespace": self.namespace,
            "with_decorators": self.with_,
            "workflow_timeout": self.workflow_timeout,
            "max_workers": self.max_workers,
            "executor": self.executor,
            "executor_config": self.executor_config,
            "assets": self.assets,
            "asset_automation": self.automation_condition,
            "workflow_priority": self.workflow_priority,
            "workflow_title": self.workflow_title,
            "workflow_description": self.workflow_description,
            "auto_emit_events": self.auto_emit_events,
            "notifications": self.notify,  # create's options; compile-component checks them
        }
        return {"name": self.name, "identity": self.identity, "options": options}

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The compiled flow's Definitions; compiles only when the flow or attributes changed."""
        flow_file = Path(self.flow_file)
        entry = component_cache.cache_entry(context.project_root, _relative_key(context), flow_file)
        attributes = self.model_dump(mode="json")
        key = component_cache.cache_key(attributes, flow_file)
        where = f"{_defs_yaml(context)}: cannot compile {_relative(flow_file, context.path)}"
        return component_cache.load_definitions(
            entry, key, self.top_level_options(), self.compile_request(), where
        )


def _relative_key(context: dg.ComponentLoadContext) -> str:
    """The component's folder below the defs root (+ `/<n>` for the n-th of a defs.yaml)."""
    path = Path(context.path)
    try:
        relative = path.relative_to(context.defs_module_path).as_posix()
    except ValueError:
        relative = "_outside/" + path.as_posix().strip("/")
    instance = getattr(context.component_loc, "instance_key", None)
    return relative if instance in (None, 0, "0") else f"{relative}/{instance}"


def _relative(path: Path, folder: Path) -> str:
    """The flow file as defs.yaml would name it."""
    return os.path.relpath(path, folder)


def _defs_yaml(context: dg.ComponentLoadContext) -> Path:
    folder = Path(context.path)
    for name in ("defs.yaml", "defs.yml"):
        if (folder / name).is_file():
            return folder / name
    return folder


__all__ = ["MetaflowFlowComponent", "MetaflowFlowScaffolder"]
