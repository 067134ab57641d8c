from metaflow import FlowSpec, step


class Nested2Flow(FlowSpec):
    """Two foreach levels with uneven inner widths."""

    @step
    def start(self):
        self.outer = [1, 2, 3]
        self.next(self.fan_inner, foreach="outer")

    @step
    def fan_inner(self):
        self.o = self.input
        self.inner = list(range(self.o))  # widths 1, 2, 3
        self.next(self.work, foreach="inner")

    @step
    def work(self):
        self.v = self.o * 10 + self.input
        self.next(self.inner_join)

    @step
    def inner_join(self, inputs):
        self.vals = sorted(i.v for i in inputs)
        self.o = inputs[0].o
        self.next(self.outer_join)

    @step
    def outer_join(self, inputs):
        self.all = sorted(v for i in inputs for v in i.vals)
        self.next(self.end)

    @step
    def end(self):
        print(self.all)


if __name__ == "__main__":
    Nested2Flow()
