from metaflow import FlowSpec, current, retry, step


class RecursiveRetryFlow(FlowSpec):
    """The third loop iteration fails once; the retry must not redo earlier iterations."""

    @step
    def start(self):
        self.count = 0
        self.next(self.loop)

    @retry(times=1)
    @step
    def loop(self):
        self.count += 1
        if self.count == 3 and current.retry_count == 0:
            raise RuntimeError("third iteration fails once")
        self.again = "yes" if self.count < 4 else "no"
        self.next({"yes": self.loop, "no": self.end}, condition="again")

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RecursiveRetryFlow()
