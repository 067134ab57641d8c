from metaflow import FlowSpec, batch, environment, kubernetes, resources, retry, step


class RemoteFlow(FlowSpec):
    """Steps on Kubernetes and AWS Batch (needs --datastore=s3; never run in the tests)."""

    @step
    def start(self):
        self.items = [1, 2]
        self.next(self.train, foreach="items")

    @retry(times=2)
    @environment(vars={"MODE": "remote"})
    @resources(memory=16000)
    @kubernetes(cpu=2, image="python:3.11-slim", labels={"team": "ml"})
    @step
    def train(self):
        self.score = self.input * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.score for i in inputs)
        self.next(self.report)

    @batch(cpu=1, memory=2048, queue="jobs")
    @step
    def report(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RemoteFlow()
