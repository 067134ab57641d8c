from metaflow import FlowSpec, step


class SplitInForeachFlow(FlowSpec):
    """A static split/join inside a foreach body."""

    @step
    def start(self):
        self.items = [2, 3, 5]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.x = self.input
        self.next(self.double, self.square)

    @step
    def double(self):
        self.y = self.x * 2
        self.next(self.combine)

    @step
    def square(self):
        self.y = self.x * self.x
        self.next(self.combine)

    @step
    def combine(self, inputs):
        self.ys = sorted(i.y for i in inputs)
        self.x = inputs.double.x
        self.next(self.join)

    @step
    def join(self, inputs):
        self.table = sorted((i.x, i.ys) for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SplitInForeachFlow()
