from metaflow import FlowSpec, step


class ForeachInBranchFlow(FlowSpec):
    """A foreach inside one branch of a static split, a nested split in the other."""

    @step
    def start(self):
        self.base = 7
        self.next(self.fanning, self.splitting)

    @step
    def fanning(self):
        self.items = [1, 2, 3, 4]
        self.next(self.each, foreach="items")

    @step
    def each(self):
        self.v = self.base + self.input
        self.next(self.gather)

    @step
    def gather(self, inputs):
        self.total = sum(i.v for i in inputs)
        self.next(self.final)

    @step
    def splitting(self):
        self.next(self.left, self.right)

    @step
    def left(self):
        self.side = "L"
        self.next(self.sides)

    @step
    def right(self):
        self.side = "R"
        self.next(self.sides)

    @step
    def sides(self, inputs):
        self.both = "".join(sorted(i.side for i in inputs))
        self.next(self.final)

    @step
    def final(self, inputs):
        self.result = (inputs.gather.total, inputs.sides.both)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ForeachInBranchFlow()
