from metaflow import FlowSpec, step


class NestedSplitFlow(FlowSpec):
    """A split inside a branch of a split."""

    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.a1, self.a2)

    @step
    def a1(self):
        self.x = "a1"
        self.next(self.a_join)

    @step
    def a2(self):
        self.x = "a2"
        self.next(self.a_join)

    @step
    def a_join(self, inputs):
        self.xs = sorted(i.x for i in inputs)
        self.next(self.join)

    @step
    def b(self):
        self.xs = ["b"]
        self.next(self.join)

    @step
    def join(self, inputs):
        self.all = sorted(x for i in inputs for x in i.xs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NestedSplitFlow()
