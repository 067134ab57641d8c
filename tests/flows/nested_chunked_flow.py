import os

from metaflow import FlowSpec, Parameter, current, retry, step


class NestedChunkedFlow(FlowSpec):
    """A nested foreach whose inner body (two plain steps) runs in chunks when forced to:
    per-task retries, and a task that fails while a marker file exists (resume, re-execution)."""

    marker = Parameter("marker", default="", help="while this file exists, cell 1-2 fails")

    @step
    def start(self):
        self.outer = [0, 1]
        self.next(self.row, foreach="outer")

    @step
    def row(self):
        self.r = self.input
        self.cols = list(range(3))
        self.next(self.cell, foreach="cols")

    @retry(times=1)
    @step
    def cell(self):
        self.c = self.input
        self.attempt = current.retry_count
        print(f"cell {self.r}-{self.c} attempt {current.retry_count}")
        if (self.r, self.c) == (0, 1) and current.retry_count == 0:
            raise RuntimeError("transient failure of cell 0-1")
        if (self.r, self.c) == (1, 2) and self.marker and os.path.exists(self.marker):
            raise ValueError("cell 1-2 is bad")
        self.v = self.r * 10 + self.c
        self.next(self.post)

    @step
    def post(self):
        self.w = self.v + 100
        self.next(self.row_join)

    @step
    def row_join(self, inputs):
        self.ws = [i.w for i in inputs]
        self.next(self.all_join)

    @step
    def all_join(self, inputs):
        self.rows = [i.ws for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NestedChunkedFlow()
