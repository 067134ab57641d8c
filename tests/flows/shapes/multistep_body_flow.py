from metaflow import FlowSpec, step


class MultistepBodyFlow(FlowSpec):
    @step
    def start(self):
        self.items = ["a", "bb", "ccc"]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.n = len(self.input)
        self.next(self.transform)

    @step
    def transform(self):
        self.n2 = self.n * self.n
        self.next(self.polish)

    @step
    def polish(self):
        self.label = f"{self.input}={self.n2}"
        self.next(self.join)

    @step
    def join(self, inputs):
        self.labels = sorted(i.label for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MultistepBodyFlow()
