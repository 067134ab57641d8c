import time

from metaflow import FlowSpec, Parameter, step


class SpreadFlow(FlowSpec):
    """A foreach whose tasks take a moment each, so a pool of workers shares them."""

    width = Parameter("width", default=6)
    pause = Parameter("pause", default=1.0)

    @step
    def start(self):
        self.items = list(range(self.width))
        self.next(self.work, foreach="items")

    @step
    def work(self):
        time.sleep(self.pause)
        self.square = self.input**2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.squares = sorted(i.square for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("squares", self.squares)


if __name__ == "__main__":
    SpreadFlow()
