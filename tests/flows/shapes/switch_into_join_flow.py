from metaflow import FlowSpec, step


class SwitchIntoJoinFlow(FlowSpec):
    """A switch whose branches go straight into a static join, beside a plain branch; and a
    switch with no merge step before `end`."""

    @step
    def start(self):
        self.v = 1
        self.next(self.a, self.b)

    @step
    def a(self):
        self.route = "y"
        self.next({"x": self.x, "y": self.y}, condition="route")

    @step
    def x(self):
        self.got = "x"
        self.next(self.join)

    @step
    def y(self):
        self.got = "y"
        self.next(self.join)

    @step
    def b(self):
        self.got = "b"
        self.next(self.join)

    @step
    def join(self, inputs):
        self.got = sorted(i.got for i in inputs)
        self.next(self.decide)

    @step
    def decide(self):
        self.pick = "p"
        self.next({"p": self.p, "q": self.q}, condition="pick")

    @step
    def p(self):
        self.last = "p"
        self.next(self.end)

    @step
    def q(self):
        self.last = "q"
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SwitchIntoJoinFlow()
