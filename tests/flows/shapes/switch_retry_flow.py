from metaflow import FlowSpec, current, retry, step


class SwitchRetryFlow(FlowSpec):
    """The switch's first attempt chooses 'a' and fails; the retry chooses 'b'."""

    @retry(times=1)
    @step
    def start(self):
        self.mode = "a" if current.retry_count == 0 else "b"
        if current.retry_count == 0:
            raise RuntimeError("fail after choosing a")
        self.next({"a": self.branch_a, "b": self.branch_b}, condition="mode")

    @step
    def branch_a(self):
        self.took = "a"
        self.next(self.merge)

    @step
    def branch_b(self):
        self.took = "b"
        self.next(self.merge)

    @step
    def merge(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SwitchRetryFlow()
