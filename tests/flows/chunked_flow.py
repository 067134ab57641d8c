import os

from metaflow import FlowSpec, Parameter, catch, current, retry, step, timeout


class ChunkedFlow(FlowSpec):
    """A foreach whose body runs in chunks when forced to: per-task retries, @catch and a
    failure that names its task."""

    width = Parameter("width", default=7, type=int)
    fail_at = Parameter("fail_at", default=-1, type=int, help="index whose body always fails")
    marker = Parameter(
        "marker", default="", help="while this file exists, the step it names fails (body: item 4's)"
    )

    @step
    def start(self):
        self.items = list(range(self.width))
        self.next(self.body, foreach="items")

    @retry(times=1)
    @timeout(seconds=60)
    @step
    def body(self):
        self.i = self.input
        self.attempt = current.retry_count
        print(f"body {self.input} attempt {current.retry_count}")
        if self.input == self.fail_at:
            raise ValueError(f"item {self.input} is bad")
        if self.input == 4 and self._marked("body"):
            raise ValueError("item 4 is bad while the marker exists")
        if self.input == 3 and current.retry_count == 0:
            raise RuntimeError("transient failure of item 3")
        self.square = self.input**2
        self.next(self.post)

    @catch(var="caught")
    @step
    def post(self):
        if self.i == 5:
            raise KeyError("item 5 is caught")

        self.plus = self.square + 1
        self.next(self.join)

    @step
    def join(self, inputs):
        if self._marked("join"):
            raise ValueError("join is bad while the marker exists")
        self.total = sum(getattr(i, "plus", 0) for i in inputs)
        self.caught = sorted(i.i for i in inputs if getattr(i, "caught", None))
        self.next(self.end)

    @step
    def end(self):
        pass

    def _marked(self, step):
        if not self.marker or not os.path.exists(self.marker):
            return False
        with open(self.marker) as f:
            return f.read().strip() == step


if __name__ == "__main__":
    ChunkedFlow()
