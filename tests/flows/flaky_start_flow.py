from metaflow import FlowSpec, Parameter, current, retry, step


class FlakyStartFlow(FlowSpec):
    """The start step fails once after choosing a different foreach width than its retry."""

    width = Parameter("width", default=3)

    @retry(times=1)
    @step
    def start(self):
        self.items = list(range(self.width + (5 if current.retry_count == 0 else 0)))
        if current.retry_count == 0:
            raise RuntimeError("first attempt fails after setting 8 items")
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.sq = self.input * self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.sq for i in inputs)
        self.n = len(list(inputs))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FlakyStartFlow()
