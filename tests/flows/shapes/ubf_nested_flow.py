"""An unbounded foreach inside a bounded one: one control task per outer item."""

from metaflow import FlowSpec, step, unbounded_test_foreach_internal
from metaflow.plugins import InternalTestUnboundedForeachInput


class UbfNestedFlow(FlowSpec):
    @step
    def start(self):
        self.xs = [1, 2]
        self.next(self.split_z, foreach="xs")

    @step
    def split_z(self):
        self.x = self.input
        self.zs = InternalTestUnboundedForeachInput([10, 20, 30])
        self.next(self.inner, foreach="zs")

    @unbounded_test_foreach_internal
    @step
    def inner(self):
        self.combo = self.x * self.input
        self.next(self.join_z)

    @step
    def join_z(self, inputs):
        self.combos = sorted(i.combo for i in inputs)
        self.next(self.join_x)

    @step
    def join_x(self, inputs):
        self.all = sorted(c for i in inputs for c in i.combos)
        self.next(self.end)

    @step
    def end(self):
        assert self.all == [10, 20, 20, 30, 40, 60], self.all


if __name__ == "__main__":
    UbfNestedFlow()
