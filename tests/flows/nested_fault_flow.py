import os
import subprocess
import sys
import time

from metaflow import FlowSpec, Parameter, current, step


class NestedFaultFlow(FlowSpec):
    """FaultFlow's held bodies one foreach deeper: an outer foreach of two items, each fanning
    out three bodies; every body with inner index 1 holds until a `release` file appears in
    the marker dir, with a grandchild that leaves the step's session and ignores SIGTERM
    (fault suite: a run worker killed while nested chunks run)."""

    marker_dir = Parameter("marker-dir", default="")
    hold = Parameter("hold", default=120)

    @step
    def start(self):
        self.outer_items = [0, 1]
        # only the first run that sees this marker dir holds (a schedule may start more)
        self.holds = False
        if self.marker_dir:
            try:
                with open(os.path.join(self.marker_dir, "holding-run"), "x") as f:
                    f.write(current.run_id)
            except FileExistsError:
                pass
            with open(os.path.join(self.marker_dir, "holding-run")) as f:
                self.holds = f.read() == current.run_id
        self.next(self.outer, foreach="outer_items")

    @step
    def outer(self):
        self.outer_index = self.input
        self.items = [0, 1, 2]
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.value = (self.outer_index * 2 + self.input) * 2
        if self.holds and self.input == 1:
            release = os.path.join(self.marker_dir, "release")
            if not os.path.exists(release):
                child = subprocess.Popen(
                    [sys.executable, "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                    start_new_session=True,
                )
                name = f"body-{self.outer_index}-{self.input}-{current.retry_count}"
                marker = os.path.join(self.marker_dir, name)
                with open(marker + ".tmp", "w") as f:
                    f.write(f"{os.getpid()} {child.pid}\n")
                os.replace(marker + ".tmp", marker)
                deadline = time.time() + self.hold
                while not os.path.exists(release) and time.time() < deadline:
                    time.sleep(0.2)
                child.kill()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.subtotal = sum(i.value for i in inputs)
        self.next(self.outer_join)

    @step
    def outer_join(self, inputs):
        self.total = sum(i.subtotal for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NestedFaultFlow()
