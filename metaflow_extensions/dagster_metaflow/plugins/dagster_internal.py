"""`dagster_internal`: the step decorator every task of a Dagster run carries (as Argo
Workflows' `argo_workflows_internal`), added by the runtime with `--with=dagster_internal`.

It records where the task ran in Dagster as the task's Metaflow metadata, so the Metaflow side
finds the Dagster side in one step (`Task(...).metadata_dict["dagster-run-id"]`) without
touching the run's tags, which stay exactly the user's `--tag`s as under `flow.py run`.

It lives in the Metaflow extension (not in `dagster_metaflow`) and imports only Metaflow, so
it also loads where the code package runs without dagster-metaflow installed (a remote task,
a @conda/@pypi environment).
"""

from __future__ import annotations

import json
import os
from typing import Any

from metaflow.decorators import StepDecorator
from metaflow.metadata_provider import MetaDatum

# environment the runtime sets for each task -> metadata field
ENV_TO_METADATA = {
    "DAGSTER_METAFLOW_DAGSTER_RUN_ID": "dagster-run-id",
    "DAGSTER_METAFLOW_JOB": "dagster-job",
    "DAGSTER_METAFLOW_STEP_KEY": "dagster-step-key",
    "DAGSTER_METAFLOW_RUN_URL": "dagster-run-url",
}


def dagster_task_metadata(is_start: bool, retry_count: int) -> list[MetaDatum]:
    """The metadata of one task attempt, from the variables the runtime set. Registered by the
    task itself, or, for a task launched elsewhere (@kubernetes, @batch: the pod never gets
    the op's environment), by `dagster launch-step` on the op's side."""
    meta = {field: os.environ[var] for var, field in ENV_TO_METADATA.items() if os.environ.get(var)}
    triggers = os.environ.get("DAGSTER_METAFLOW_TRIGGERS")
    if triggers and is_start:  # `Run.trigger` reads it from the start task
        meta["execution-triggers"] = triggers
    return [
        MetaDatum(field=field, value=value, type=field, tags=[f"attempt_id:{retry_count}"])
        for field, value in meta.items()
    ]


class DagsterInternalDecorator(StepDecorator):
    """Internal: records the Dagster run, job and op of each task as task metadata."""

    name = "dagster_internal"

    def task_pre_step(
        self,
        step_name: str,
        task_datastore: Any,
        metadata: Any,
        run_id: str,
        task_id: str,
        flow: Any,
        graph: Any,
        retry_count: int,
        max_user_code_retries: int,
        ubf_context: Any,
        inputs: Any,
    ) -> None:
        triggers = os.environ.get("DAGSTER_METAFLOW_TRIGGERS")
        if triggers:
            # the events that started the run, as Argo's internal decorator exposes them
            from metaflow import current
            from metaflow.events import Trigger

            current._update_env({"trigger": Trigger(json.loads(triggers))})
        entries = dagster_task_metadata(step_name == graph.start_step, retry_count)
        if entries:
            metadata.register_metadata(run_id, step_name, task_id, entries)
