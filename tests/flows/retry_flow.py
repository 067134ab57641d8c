import os

from metaflow import FlowSpec, current, environment, retry, step, timeout


class RetryFlow(FlowSpec):
    """A step that fails on its first attempt and succeeds on the retry."""

    @step
    def start(self):
        self.value = 1
        self.next(self.process)

    @retry(times=2)
    @timeout(seconds=120)
    @environment(vars={"MY_VAR": "hello", "OTHER": "world"})
    @step
    def process(self):
        self.attempt = current.retry_count
        self.env = (os.environ.get("MY_VAR"), os.environ.get("OTHER"))
        if current.retry_count == 0:
            raise RuntimeError("transient failure on first attempt")
        self.result = self.value * 2
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RetryFlow()
