from metaflow import FlowSpec, Parameter, step


class UpstreamFlow(FlowSpec):
    """Finishes (or fails, with --fail) to start the flows that wait for it."""

    fail = Parameter("fail", type=bool, default=False)

    @step
    def start(self):
        if self.fail:
            raise RuntimeError("upstream asked to fail")
        self.value = 42
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    UpstreamFlow()
