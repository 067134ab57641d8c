import sys

from metaflow import FlowSpec, step


class FailingFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.explode)

    @step
    def explode(self):
        print("about to fail", file=sys.stderr)
        raise ValueError("boom-7f3a")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FailingFlow()
