from metaflow import FlowSpec, step


class ForeachInSplitInForeachFlow(FlowSpec):
    """Outer foreach; its body splits; one branch fans out again; the branches rejoin."""

    @step
    def start(self):
        self.groups = ["g1", "g2"]
        self.next(self.group, foreach="groups")

    @step
    def group(self):
        self.g = self.input
        self.next(self.fan, self.plain)

    @step
    def fan(self):
        self.parts = [1, 2, 3] if self.g == "g1" else [4]
        self.next(self.part, foreach="parts")

    @step
    def part(self):
        self.p = f"{self.g}-{self.input}"
        self.next(self.parts_done)

    @step
    def parts_done(self, inputs):
        self.ps = sorted(i.p for i in inputs)
        self.next(self.regather)

    @step
    def plain(self):
        self.note = self.g.upper()
        self.next(self.regather)

    @step
    def regather(self, inputs):
        self.out = (inputs.plain.note, inputs.parts_done.ps)
        self.next(self.all_groups)

    @step
    def all_groups(self, inputs):
        self.outs = sorted(i.out for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ForeachInSplitInForeachFlow()
