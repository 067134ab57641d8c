"""The end op's asset outputs: once the `end` task succeeded, one `Output` per asset the
flow declares (its own, and one per named artifact), each with the metadata Dagster's asset
catalog shows (assets.py). A failed run never gets here, so it materializes nothing."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from dagster import OpExecutionContext, Output

from .settings import FlowSettings


def asset_outputs(
    settings: FlowSettings,
    context: OpExecutionContext,
    task: str,
    outputs: Mapping[str, str | None],
    card_root: str | None = None,
) -> Iterator[Output[str]]:
    """Yield the asset outputs for the end task `task` (`run/end/task_id`): `outputs` maps an
    output name to its artifact (None: the flow's own asset, always yielded)."""
    from . import assets

    run_id, _step, task_id = task.split("/")
    where: dict[str, Any] = dict(
        flow_name=settings.name,
        run_id=run_id,
        end_task_id=task_id,
        datastore_type=settings.datastore_type,
        datastore_root=settings.datastore_root,
    )
    artifacts = [a for a in outputs.values() if a is not None]
    found = (
        _safe(
            context,
            lambda: assets.artifacts_metadata(
                **where, artifacts=artifacts, card_root=card_root, card_steps=settings.card_steps
            ),
            {},
        )
        if artifacts
        else {}
    )
    pathspec = f"{settings.name}/{task}"
    for name, artifact in outputs.items():
        if artifact is None:
            run_meta = _safe(
                context,
                lambda: assets.flow_asset_metadata(
                    **where,
                    dagster_run_id=context.run_id,
                    skip={field for field, _env, _type in settings.parameters},
                ),
                {},
            )
            yield Output(f"{settings.name}/{run_id}", name, metadata=run_meta)
        elif found.get(artifact) is not None:
            yield Output(f"{pathspec}/{artifact}", name, metadata=found[artifact])
        else:
            context.log.warning(
                f"asset {artifact!r} is not materialized: the end task {pathspec} has no "
                f"artifact {artifact!r}"
            )


def _safe(context: OpExecutionContext, build: Any, default: Any) -> Any:
    """Metadata is for show: a failure to read it is a warning, never a failed run."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - reported; the run's outcome stands
        context.log.warning(f"could not read the assets' metadata: {exc}")
        return default
