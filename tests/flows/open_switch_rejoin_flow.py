from metaflow import FlowSpec, step


class OpenSwitchRejoinFlow(FlowSpec):
    """A split whose first branch is an open switch going straight into the split's join:
    one branch a foreach (ending in its join), the other a switch (ending in a merge).
    Whichever branch is not taken, Dagster skips that foreach join or merge; the split's
    join must still run on what was taken (wiring unit test)."""

    @step
    def start(self):
        self.next(self.osw, self.other)

    @step
    def osw(self):
        self.choice = "b"
        self.next({"a": self.fe, "b": self.sw}, condition="choice")

    @step
    def fe(self):
        self.items = [1, 2]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.next(self.post)

    @step
    def post(self):
        self.next(self.fjoin)

    @step
    def fjoin(self, inputs):
        self.next(self.join)

    @step
    def sw(self):
        self.c = "x"
        self.next({"x": self.x, "y": self.y}, condition="c")

    @step
    def x(self):
        self.next(self.merge)

    @step
    def y(self):
        self.next(self.merge)

    @step
    def merge(self):
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
    OpenSwitchRejoinFlow()
