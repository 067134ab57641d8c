from metaflow import FlowSpec, dm_stamp, step


class ExtDecoFlow(FlowSpec):
    """Step decorators from a Metaflow extension package (tests/extensions)."""

    @dm_stamp(value="hello")
    @step
    def start(self):
        self.items = [1, 2]
        self.next(self.body, foreach="items")

    @dm_stamp
    @step
    def body(self):
        self.x = self.input
        self.next(self.join)

    @step
    def join(self, inputs):
        self.stamps = sorted(i.dm_before for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ExtDecoFlow()
