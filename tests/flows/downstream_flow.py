from metaflow import FlowSpec, current, step, trigger_on_finish


@trigger_on_finish(flow="UpstreamFlow")
class DownstreamFlow(FlowSpec):
    """Starts when UpstreamFlow succeeds; reads what it produced."""

    @step
    def start(self):
        run = current.trigger.run
        self.upstream = run.pathspec
        self.upstream_value = run.data.value
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    DownstreamFlow()
