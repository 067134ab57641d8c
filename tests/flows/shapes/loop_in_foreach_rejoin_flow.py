from metaflow import FlowSpec, step


class LoopInForeachRejoinFlow(FlowSpec):
    """A loop inside a foreach body whose exits rejoin through different steps."""

    @step
    def start(self):
        self.items = [1, 2, 3]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.n = self.input
        self.count = 0
        self.next(self.spin)

    @step
    def spin(self):
        self.count += 1
        self.route = "again" if self.count < self.n else ("odd" if self.n % 2 else "even")
        self.next({"again": self.spin, "odd": self.odd, "even": self.even}, condition="route")

    @step
    def odd(self):
        self.tag = "odd"
        self.next(self.merge)

    @step
    def even(self):
        self.tag = "even"
        self.next(self.merge)

    @step
    def merge(self):
        self.result = (self.n, self.count, self.tag)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.results = sorted(i.result for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LoopInForeachRejoinFlow()
