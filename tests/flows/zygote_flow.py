import os

from metaflow import FlowSpec, step

from dagster_metaflow.runtime.proc_start import start_ticks


class ZygoteFlow(FlowSpec):
    """Records the process its start step was forked from (the step zygote, or the run
    worker when forking is off) and when that process started (clock ticks since boot, which
    no clock adjustment moves)."""

    @step
    def start(self):
        self.forked_from = os.getppid()
        self.forked_from_started = start_ticks(self.forked_from)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ZygoteFlow()
