from metaflow import FlowSpec, step


class Nested3Flow(FlowSpec):
    """Three foreach levels, steps between the inner and outer joins."""

    @step
    def start(self):
        self.a_items = [0, 1]
        self.next(self.level_a, foreach="a_items")

    @step
    def level_a(self):
        self.a = self.input
        self.b_items = list(range(self.a + 1))
        self.next(self.level_b, foreach="b_items")

    @step
    def level_b(self):
        self.b = self.input
        self.c_items = ["x", "y"][: self.b + 1]
        self.next(self.level_c, foreach="c_items")

    @step
    def level_c(self):
        self.tag = f"{self.a}{self.b}{self.input}"
        self.next(self.join_c)

    @step
    def join_c(self, inputs):
        self.tags = sorted(i.tag for i in inputs)
        self.next(self.between_bc)

    @step
    def between_bc(self):
        self.count = len(self.tags)
        self.next(self.join_b)

    @step
    def join_b(self, inputs):
        self.tags = sorted(t for i in inputs for t in i.tags)
        self.count = sum(i.count for i in inputs)
        self.next(self.between_ab)

    @step
    def between_ab(self):
        self.summary = f"{self.count}:{','.join(self.tags)}"
        self.next(self.join_a)

    @step
    def join_a(self, inputs):
        self.summaries = sorted(i.summary for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print(self.summaries)


if __name__ == "__main__":
    Nested3Flow()
