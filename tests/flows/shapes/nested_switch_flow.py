from metaflow import FlowSpec, step


class NestedSwitchFlow(FlowSpec):
    """A switch inside a nested foreach, merging before the inner join."""

    @step
    def start(self):
        self.rows = [0, 1]
        self.next(self.row, foreach="rows")

    @step
    def row(self):
        self.r = self.input
        self.cols = [0, 1, 2]
        self.next(self.cell, foreach="cols")

    @step
    def cell(self):
        self.c = self.input
        self.kind = "diag" if self.r == self.c else "off"
        self.next({"diag": self.on_diag, "off": self.off_diag}, condition="kind")

    @step
    def on_diag(self):
        self.val = 1
        self.next(self.cell_done)

    @step
    def off_diag(self):
        self.val = 0
        self.next(self.cell_done)

    @step
    def cell_done(self):
        self.entry = (self.r, self.c, self.val)
        self.next(self.row_join)

    @step
    def row_join(self, inputs):
        self.entries = sorted(i.entry for i in inputs)
        self.next(self.matrix)

    @step
    def matrix(self, inputs):
        self.m = sorted(e for i in inputs for e in i.entries)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NestedSwitchFlow()
