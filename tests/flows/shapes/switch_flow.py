from metaflow import FlowSpec, Parameter, step


class SwitchFlow(FlowSpec):
    """Conditional branches with a multi-step branch and a merge."""

    mode = Parameter("mode", default="long")

    @step
    def start(self):
        self.next({"long": self.long_a, "short": self.short}, condition="mode")

    @step
    def long_a(self):
        self.path = ["long_a"]
        self.next(self.long_b)

    @step
    def long_b(self):
        self.path = self.path + ["long_b"]
        self.next(self.merge)

    @step
    def short(self):
        self.path = ["short"]
        self.next(self.merge)

    @step
    def merge(self):
        self.route = "/".join(self.path)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SwitchFlow()
