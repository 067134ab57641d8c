from metaflow import FlowSpec, step


class OpenSwitchNestedFlow(FlowSpec):
    """A split whose first branch is an open switch going straight into the split's join,
    each of its branches a nested foreach (the first one's inner body may run in chunks):
    the switch marks the branch not taken (its ops pass a not-taken marker on), and the
    split's join runs on what was taken (wiring unit test)."""

    @step
    def start(self):
        self.next(self.osw, self.other)

    @step
    def osw(self):
        self.choice = "b"
        self.next({"a": self.oa, "b": self.ob}, condition="choice")

    @step
    def oa(self):
        self.rows = [1, 2]
        self.next(self.row_a, foreach="rows")

    @step
    def row_a(self):
        self.cells = [1, 2]
        self.next(self.cell_a, foreach="cells")

    @step
    def cell_a(self):
        self.next(self.row_join_a)

    @step
    def row_join_a(self, inputs):
        self.next(self.outer_join_a)

    @step
    def outer_join_a(self, inputs):
        self.next(self.join)

    @step
    def ob(self):
        self.rows = [1, 2]
        self.next(self.row_b, foreach="rows")

    @step
    def row_b(self):
        self.cells = [1, 2]
        self.next(self.cell_b, foreach="cells")

    @step
    def cell_b(self):
        self.c = "x"
        self.next({"x": self.bx, "y": self.by}, condition="c")

    @step
    def bx(self):
        self.next(self.row_join_b)

    @step
    def by(self):
        self.next(self.row_join_b)

    @step
    def row_join_b(self, inputs):
        self.next(self.outer_join_b)

    @step
    def outer_join_b(self, inputs):
        self.next(self.join)

    @step
    def other(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    OpenSwitchNestedFlow()
