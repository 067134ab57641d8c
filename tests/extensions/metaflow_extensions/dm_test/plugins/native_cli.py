"""`flow.py dm-native step-command ...`: the command Metaflow's own runtime launches for one
task, for tests that compare dagster-metaflow's launches with it.

It runs Metaflow's real `NativeRuntime` hook calls, `runtime.Task` and `Worker._launch`
for the task, with only the I/O a test cannot do replaced: the code package "upload"
returns the given url/sha, the task's datastore is not written, and `Popen` records the
command instead of starting it.
"""

import json
import os
from types import SimpleNamespace
from unittest import mock

from metaflow._vendor import click


@click.group()
def cli():
    pass


@cli.group(name="dm-native")
def dm_native():
    pass


@dm_native.command(name="step-command")
@click.argument("step_name")
@click.option("--run-id", required=True)
@click.option("--task-id", required=True)
@click.option("--input-paths", required=True)
@click.option("--retry-count", default=0, type=int)
@click.option("--split-index", default=None, type=int)
@click.option("--ubf-context", default=None)
@click.option("--tag", "tags", multiple=True)
@click.option("--namespace", "task_namespace", default=None)
@click.option("--package-url", required=True)
@click.option("--package-sha", required=True)
@click.option("--package-metadata", required=True)
@click.option("--config-file", default=None)
@click.pass_obj
def step_command(obj, step_name, run_id, task_id, input_paths, retry_count, split_index, ubf_context,
                 tags, task_namespace, package_url, package_sha, package_metadata, config_file):
    from metaflow import namespace
    from metaflow.datastore.task_datastore import TaskDataStore
    from metaflow.runtime import Task, Worker
    from metaflow.util import decompress_list

    if task_namespace is not None:
        namespace(task_namespace or None)
    flow, graph = obj.flow, obj.graph
    # `run`: the run's tags, and the code package it made
    obj.metadata.add_sticky_tags(tags=list(tags))
    package = SimpleNamespace(blob=b"code package", package_metadata=package_metadata)
    # NativeRuntime.__init__
    for step in flow:
        for deco in step.decorators:
            if deco.runtime_init_ctx is not None:
                deco.runtime_init_ctx(step.__name__)
            else:
                deco.runtime_init(flow, graph, package, run_id)
    saved = [(package_url, package_sha)]
    with mock.patch.object(type(obj.flow_datastore), "save_data", return_value=saved), \
            mock.patch.object(TaskDataStore, "init_task"):
        task = Task(
            obj.flow_datastore, flow, step_name, run_id, obj.metadata, obj.environment,
            obj.entrypoint, obj.event_logger, obj.monitor,
            input_paths=decompress_list(input_paths),
            decos=getattr(flow, step_name).decorators,
            logger=obj.logger,
            split_index=split_index,
            ubf_context=ubf_context,
            task_id=task_id,
        )
    task.retries = retry_count  # NativeRuntime._retry_worker, once per earlier attempt
    worker = Worker.__new__(Worker)
    worker.task = task
    worker._config_file_name = config_file
    worker._orig_flow_datastore = None
    worker._spin_pathspec = None
    worker._artifacts_module = None
    worker._persist = True
    worker._skip_decorators = False
    launched = {}

    def popen(cmdline, env, **kwargs):
        launched.update(argv=list(cmdline), env={k: v for k, v in env.items() if os.environ.get(k) != v})
        return SimpleNamespace(pid=0)

    with mock.patch("metaflow.runtime.subprocess.Popen", side_effect=popen):
        worker._launch()
    click.echo(json.dumps(launched))
