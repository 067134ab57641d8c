from metaflow.decorators import StepDecorator


class StampDecorator(StepDecorator):
    """Task-side only: sets an artifact before and after the step runs."""

    name = "dm_stamp"
    defaults = {"value": "stamped"}

    def task_pre_step(self, step_name, task_datastore, metadata, run_id, task_id, flow, graph,
                      retry_count, max_user_code_retries, ubf_context, inputs):
        flow.dm_before = f"{self.attributes['value']}:{step_name}:{task_id}"

    def task_post_step(self, step_name, flow, graph, retry_count, max_user_code_retries):
        flow.dm_after = step_name


class RuntimeOnlyDecorator(StepDecorator):
    """Needs a hook only `flow.py run` calls."""

    name = "dm_runtime_only"

    def runtime_step_cli(self, cli_args, retry_count, max_user_code_retries, ubf_context):
        cli_args.env["DM_RUNTIME_ONLY"] = "1"
