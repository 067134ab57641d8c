"""Compile Metaflow flows into Dagster jobs and run them with Metaflow's semantics."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def publish_event(name: str, payload: dict | None = None, instance: object | None = None) -> str:
    """Publish a Metaflow event to the Dagster instance (DAGSTER_HOME): every deployment whose
    `@trigger` waits for `name` starts a run, with parameters from `payload`. Returns its id."""
    from .runtime.sensors import publish_event as _publish

    return _publish(name, payload, instance)  # type: ignore[arg-type]


# the compile API (`compiler`), imported on first use: `import dagster_metaflow` stays light
_LAZY = {
    "compile_flow": "compiler",
    "flow_source": "compiler",
    "CompileOptions": "compiler",
    "CompiledFlow": "compiler",
    "FlowSource": "compiler",
    "CompileError": "errors",
    # the dg component (`dg list components`: dagster_metaflow.MetaflowFlowComponent)
    "MetaflowFlowComponent": "component",
}

if TYPE_CHECKING:
    from .compiler import CompiledFlow, CompileOptions, FlowSource, compile_flow, flow_source
    from .component import MetaflowFlowComponent
    from .errors import CompileError


def __getattr__(name: str) -> Any:
    """Import the compile API when it is first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too: dg finds components by `dir()` of the registry module."""
    return sorted([*globals(), *_LAZY])


__all__ = [
    "CompileError",
    "CompileOptions",
    "CompiledFlow",
    "FlowSource",
    "MetaflowFlowComponent",
    "__version__",
    "compile_flow",
    "flow_source",
    "publish_event",
]
