from metaflow import FlowSpec, step


class OpenSwitchMergesFlow(FlowSpec):
    """A split whose first branch is an open switch going straight into the split's join,
    each of its branches a switch ending in a merge: Dagster skips the merge of the branch
    not taken, and the split's join must still run on what was taken (wiring unit test)."""

    @step
    def start(self):
        self.next(self.osw, self.other)

    @step
    def osw(self):
        self.choice = "b"
        self.next({"a": self.sw1, "b": self.sw2}, condition="choice")

    @step
    def sw1(self):
        self.c = "x"
        self.next({"x": self.x, "y": self.y}, condition="c")

    @step
    def x(self):
        self.next(self.m1)

    @step
    def y(self):
        self.next(self.m1)

    @step
    def m1(self):
        self.next(self.join)

    @step
    def sw2(self):
        self.c = "p"
        self.next({"p": self.p, "q": self.q}, condition="c")

    @step
    def p(self):
        self.next(self.m2)

    @step
    def q(self):
        self.next(self.m2)

    @step
    def m2(self):
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
    OpenSwitchMergesFlow()
