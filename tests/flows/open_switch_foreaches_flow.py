from metaflow import FlowSpec, step


class OpenSwitchForeachesFlow(FlowSpec):
    """A split whose first branch is an open switch going straight into the split's join,
    one branch a foreach whose body may run in chunks, the other one whose body is a switch
    (its join collects one list per branch): the switch marks the branch not taken (its
    ops pass a not-taken marker on), and the split's join runs on what was taken (wiring
    unit test, snapshot)."""

    @step
    def start(self):
        self.next(self.osw, self.other)

    @step
    def osw(self):
        self.choice = "b"
        self.next({"a": self.fe, "b": self.fe2}, condition="choice")

    @step
    def fe(self):
        self.items = [1, 2]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.next(self.fjoin)

    @step
    def fjoin(self, inputs):
        self.next(self.join)

    @step
    def fe2(self):
        self.items = [1, 2]
        self.next(self.pick, foreach="items")

    @step
    def pick(self):
        self.c = "x"
        self.next({"x": self.bx, "y": self.by}, condition="c")

    @step
    def bx(self):
        self.next(self.fjoin2)

    @step
    def by(self):
        self.next(self.fjoin2)

    @step
    def fjoin2(self, inputs):
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
    OpenSwitchForeachesFlow()
