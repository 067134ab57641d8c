from metaflow import FlowSpec, step


class EmptyInnerFlow(FlowSpec):
    """The second outer item's inner list is empty: Metaflow refuses zero splits."""

    @step
    def start(self):
        self.outer = [2, 0]
        self.next(self.outer_step, foreach="outer")

    @step
    def outer_step(self):
        self.inner = list(range(self.input))
        self.next(self.inner_step, foreach="inner")

    @step
    def inner_step(self):
        self.v = self.input
        self.next(self.inner_join)

    @step
    def inner_join(self, inputs):
        self.vs = [i.v for i in inputs]
        self.next(self.outer_join)

    @step
    def outer_join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EmptyInnerFlow()
