from metaflow import FlowSpec, step


class ReservedNamesFlow(FlowSpec):
    """Steps named like Dagster-reserved words and names the generated file uses."""

    @step
    def start(self):
        self.trail = ["start"]
        self.next(self.output)

    @step
    def output(self):
        self.trail = self.trail + ["output"]
        self.next(self.config, self.context)

    @step
    def config(self):
        self.mark = "config"
        self.next(self.type)

    @step
    def context(self):
        self.mark = "context"
        self.next(self.type)

    @step
    def type(self, inputs):
        self.marks = sorted(i.mark for i in inputs)
        self.next(self.op_end)

    @step
    def op_end(self):
        self.items = [1, 2]
        self.next(self.item, foreach="items")

    @step
    def item(self):
        self.v = self.input
        self.next(self.defs)

    @step
    def defs(self, inputs):
        self.vs = sorted(i.v for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ReservedNamesFlow()
