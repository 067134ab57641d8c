from metaflow import FlowSpec, step


class SwitchToMergeFlow(FlowSpec):
    """One case goes straight to the merge step."""

    @step
    def start(self):
        self.choice = "skip"
        self.value = 1
        self.next({"work": self.work, "skip": self.merge}, condition="choice")

    @step
    def work(self):
        self.value = 100
        self.next(self.merge)

    @step
    def merge(self):
        self.final = self.value
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SwitchToMergeFlow()
