from metaflow import FlowSpec, step


class RecursiveFlow(FlowSpec):
    """A step that routes back to itself until a condition changes."""

    @step
    def start(self):
        self.count = 0
        self.history = []
        self.next(self.loop)

    @step
    def loop(self):
        self.count += 1
        self.history = self.history + [self.count]
        self.again = "yes" if self.count < 4 else "no"
        self.next({"yes": self.loop, "no": self.end}, condition="again")

    @step
    def end(self):
        print(self.count, self.history)


if __name__ == "__main__":
    RecursiveFlow()
