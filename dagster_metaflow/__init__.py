"""Compile Metaflow flows into Dagster jobs and run them with Metaflow's semantics."""

__version__ = "0.1.0"


def publish_event(name: str, payload: dict | None = None, instance: object | None = None) -> str:
    """Publish a Metaflow event to the Dagster instance (DAGSTER_HOME): every deployment whose
    `@trigger` waits for `name` starts a run, with parameters from `payload`. Returns its id."""
    from .runtime.automation import publish_event as _publish

    return _publish(name, payload, instance)  # type: ignore[arg-type]


__all__ = ["__version__", "publish_event"]
