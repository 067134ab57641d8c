import os
import time

from metaflow import FlowSpec, JSONType, Parameter, step


class DeployFlow(FlowSpec):
    """Foreach whose body fails for item i while `<marker-dir>/fail-<i>` exists."""

    marker_dir = Parameter("marker-dir", default="")
    alpha = Parameter("alpha", default=0.5)
    retry_count = Parameter("retry_count", default=0, type=int)  # named like a Metaflow built-in
    payload = Parameter("payload", type=JSONType, default='{"k": [1, 2]}')
    flag = Parameter("flag", default=False, type=bool)

    @step
    def start(self):
        self.seen = {
            "alpha": self.alpha,
            "retry_count": self.retry_count,
            "payload": self.payload,
            "flag": self.flag,
        }
        self.items = [1, 2, 3]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        if self.marker_dir and os.path.exists(os.path.join(self.marker_dir, f"fail-{self.input}")):
            raise RuntimeError(f"marker says item {self.input} fails")
        self.out = self.input * 2
        self.ran_at = time.time()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.results = sorted(i.out for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    DeployFlow()
