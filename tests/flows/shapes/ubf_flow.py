"""Unbounded foreach (Metaflow's own test implementation): one control task starts the tasks."""

from metaflow import FlowSpec, step, unbounded_test_foreach_internal
from metaflow.plugins import InternalTestUnboundedForeachInput


class UbfFlow(FlowSpec):
    @step
    def start(self):
        self.items = InternalTestUnboundedForeachInput(["a", "bb", "ccc"])
        self.next(self.body, foreach="items")

    @unbounded_test_foreach_internal
    @step
    def body(self):
        self.n = len(self.input)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.n for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        assert self.total == 6


if __name__ == "__main__":
    UbfFlow()
