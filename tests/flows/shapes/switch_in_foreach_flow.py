from metaflow import FlowSpec, step


class SwitchInForeachFlow(FlowSpec):
    """A switch inside a foreach body: each item picks its branch."""

    @step
    def start(self):
        self.items = [1, 2, 3, 4, 5]
        self.next(self.classify, foreach="items")

    @step
    def classify(self):
        self.n = self.input
        self.parity = "even" if self.n % 2 == 0 else "odd"
        self.next({"even": self.halve, "odd": self.triple}, condition="parity")

    @step
    def halve(self):
        self.r = self.n // 2
        self.next(self.settle)

    @step
    def triple(self):
        self.r = self.n * 3 + 1
        self.next(self.settle)

    @step
    def settle(self):
        self.pair = (self.n, self.r)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.pairs = sorted(i.pair for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SwitchInForeachFlow()
