from metaflow import FlowSpec, catch, retry, step


class CatchFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.fragile)

    @catch(var="failure")
    @retry(times=1)
    @step
    def fragile(self):
        raise RuntimeError("always fails")
        self.next(self.end)

    @step
    def end(self):
        self.caught = self.failure is not None


if __name__ == "__main__":
    CatchFlow()
