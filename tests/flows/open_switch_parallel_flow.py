from metaflow import FlowSpec, parallel, step


class OpenSwitchParallelFlow(FlowSpec):
    """A split whose first branch is an open switch going straight into the split's join,
    each of its branches a @parallel step and its join: Dagster skips the branch not taken
    with its join, and the split's join must still run on what was taken (wiring unit test)."""

    @step
    def start(self):
        self.next(self.osw, self.other)

    @step
    def osw(self):
        self.choice = "b"
        self.next({"a": self.pa, "b": self.pb}, condition="choice")

    @step
    def pa(self):
        self.next(self.train_a, num_parallel=2)

    @parallel
    @step
    def train_a(self):
        self.next(self.gather_a)

    @step
    def gather_a(self, inputs):
        self.next(self.join)

    @step
    def pb(self):
        self.next(self.train_b, num_parallel=2)

    @parallel
    @step
    def train_b(self):
        self.next(self.gather_b)

    @step
    def gather_b(self, inputs):
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
    OpenSwitchParallelFlow()
