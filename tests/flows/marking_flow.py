from metaflow import FlowSpec, step


class MarkingFlow(FlowSpec):
    """Which top-level switches mark their branch not taken (wiring.marking_switches, unit
    test): start (a foreach on one branch only) and lp (a loop, a foreach on one exit) do; sw2
    (inside start's branch: both its branches reach the same foreaches) and m3 (a foreach
    after its merge m4 only) do not."""

    @step
    def start(self):
        self.c = "x"
        self.next({"x": self.fx, "y": self.sw2}, condition="c")

    @step
    def fx(self):
        self.items = [1, 2]
        self.next(self.fbody, foreach="items")

    @step
    def fbody(self):
        self.next(self.fjoin)

    @step
    def fjoin(self, inputs):
        self.next(self.m1)

    @step
    def sw2(self):
        self.d = "p"
        self.next({"p": self.p1, "q": self.p2}, condition="d")

    @step
    def p1(self):
        self.next(self.m2)

    @step
    def p2(self):
        self.next(self.m2)

    @step
    def m2(self):
        self.next(self.m1)

    @step
    def m1(self):
        self.next(self.lp)

    @step
    def lp(self):
        self.k = getattr(self, "k", 0) + 1
        self.route = "again" if self.k < 2 else "a"
        self.next({"again": self.lp, "a": self.la, "b": self.lb}, condition="route")

    @step
    def la(self):
        self.items = [1]
        self.next(self.lbody, foreach="items")

    @step
    def lbody(self):
        self.next(self.ljoin)

    @step
    def ljoin(self, inputs):
        self.next(self.m3)

    @step
    def lb(self):
        self.next(self.m3)

    @step
    def m3(self):
        self.e = "u"
        self.next({"u": self.u1, "v": self.v1}, condition="e")

    @step
    def u1(self):
        self.next(self.m4)

    @step
    def v1(self):
        self.next(self.m4)

    @step
    def m4(self):
        self.items = [1, 2]
        self.next(self.after, foreach="items")

    @step
    def after(self):
        self.next(self.ajoin)

    @step
    def ajoin(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MarkingFlow()
