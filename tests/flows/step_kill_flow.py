import os
import time

from metaflow import FlowSpec, Parameter, current, retry, step


class StepKillFlow(FlowSpec):
    """A step whose first attempt waits to be killed (fault suite: step kill with @retry)."""

    marker_dir = Parameter("marker-dir", default="")

    @step
    def start(self):
        self.next(self.work)

    @retry(times=1, minutes_between_retries=0)
    @step
    def work(self):
        if current.retry_count == 0 and self.marker_dir:
            with open(os.path.join(self.marker_dir, "work.tmp"), "w") as f:
                f.write(str(os.getpid()))
            os.replace(os.path.join(self.marker_dir, "work.tmp"), os.path.join(self.marker_dir, "work"))
            time.sleep(300)
        self.attempt_seen = current.retry_count
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    StepKillFlow()
