import os

import psutil
from metaflow import FlowSpec, step


class ZygoteFlow(FlowSpec):
    """Records the process its start step was forked from (the step zygote, or the run
    worker when forking is off) and when that process started."""

    @step
    def start(self):
        parent = psutil.Process(os.getppid())
        self.forked_from = parent.pid
        self.forked_from_started = parent.create_time()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ZygoteFlow()
