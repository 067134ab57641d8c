import os
import subprocess
import time

from metaflow import FlowSpec, Parameter, step, timeout


class SleepyFlow(FlowSpec):
    """A step that prints a marker, starts a grandchild, then sleeps (for cancel/timeout tests)."""

    marker_dir = Parameter("marker-dir", default="")

    @step
    def start(self):
        self.next(self.nap)

    @timeout(seconds=4)
    @step
    def nap(self):
        child = subprocess.Popen(["sleep", "300"])
        if self.marker_dir:
            with open(os.path.join(self.marker_dir, "pids"), "w") as f:
                f.write(f"{os.getpid()} {child.pid}\n")
        print("nap-started", flush=True)
        time.sleep(300)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SleepyFlow()
