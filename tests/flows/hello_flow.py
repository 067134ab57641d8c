from metaflow import FlowSpec, Parameter, step


class HelloFlow(FlowSpec):
    """A small flow with a foreach and a static branch."""

    alpha = Parameter("alpha", default=0.5, help="a float")
    n = Parameter("n", default=3)

    @step
    def start(self):
        self.items = list(range(self.n))
        self.next(self.square, foreach="items")

    @step
    def square(self):
        self.value = self.input ** 2 * self.alpha
        print("square", self.input, self.value)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.value for i in inputs)
        self.next(self.fork)

    @step
    def fork(self):
        self.next(self.left, self.right)

    @step
    def left(self):
        self.side = "L"
        self.next(self.merge)

    @step
    def right(self):
        self.side = "R"
        self.next(self.merge)

    @step
    def merge(self, inputs):
        self.sides = sorted(i.side for i in inputs)
        self.total = inputs[0].total
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total, self.sides)


if __name__ == "__main__":
    HelloFlow()
