from metaflow import FlowSpec, Parameter, step, trigger


@trigger(event={"name": "metaflow.UpstreamFlow.end", "parameters": {"upstream_run": "run_id"}})
class EndEventFlow(FlowSpec):
    """Starts on the event UpstreamFlow's successful runs publish (--auto-emit-events), as a
    flow under Argo Workflows would: its run id comes from the payload's `run_id`."""

    upstream_run = Parameter("upstream_run", default="")

    @step
    def start(self):
        self.seen_run = self.upstream_run
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EndEventFlow()
