from metaflow import FlowSpec, step


class SwitchIntoForeachJoinFlow(FlowSpec):
    """A switch inside foreach bodies (one and two levels deep) whose branches go straight
    into the foreach join; in the outer level every item takes the same branch."""

    @step
    def start(self):
        self.items = [1, 2, 3]
        self.next(self.route, foreach="items")

    @step
    def route(self):
        self.n = self.input
        self.kind = "odd" if self.n % 2 else "even"
        self.next({"odd": self.odd, "even": self.even}, condition="kind")

    @step
    def odd(self):
        self.r = self.n * 3
        self.next(self.join)

    @step
    def even(self):
        self.r = self.n // 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.rs = sorted(i.r for i in inputs)
        self.next(self.grid)

    @step
    def grid(self):
        self.rows = [0, 1]
        self.next(self.outer, foreach="rows")

    @step
    def outer(self):
        self.row = self.input
        self.cols = [0, 1]
        self.next(self.inner, foreach="cols")

    @step
    def inner(self):
        self.cell = (self.row, self.input)
        self.side = "left"  # every item takes the same branch: "right" is never chosen
        self.next({"left": self.left, "right": self.right}, condition="side")

    @step
    def left(self):
        self.tag = ("L",) + self.cell
        self.next(self.inner_join)

    @step
    def right(self):
        self.tag = ("R",) + self.cell
        self.next(self.inner_join)

    @step
    def inner_join(self, inputs):
        self.tags = sorted(i.tag for i in inputs)
        self.next(self.outer_join)

    @step
    def outer_join(self, inputs):
        self.all_tags = sorted(t for i in inputs for t in i.tags)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SwitchIntoForeachJoinFlow()
