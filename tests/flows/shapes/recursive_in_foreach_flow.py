from metaflow import FlowSpec, step


class RecursiveInForeachFlow(FlowSpec):
    """Each foreach item loops a different number of times."""

    @step
    def start(self):
        self.limits = [1, 3, 2]
        self.next(self.prep, foreach="limits")

    @step
    def prep(self):
        self.limit = self.input
        self.count = 0
        self.next(self.spin)

    @step
    def spin(self):
        self.count += 1
        self.more = "yes" if self.count < self.limit else "no"
        self.next({"yes": self.spin, "no": self.done}, condition="more")

    @step
    def done(self):
        self.result = (self.limit, self.count)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.results = sorted(i.result for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RecursiveInForeachFlow()
