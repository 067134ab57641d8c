import os
import subprocess
import sys
import time

from metaflow import FlowSpec, Parameter, current, step


class FaultFlow(FlowSpec):
    """A foreach whose bodies (but item 0) hold until a `release` file appears in the marker
    dir, each with a grandchild that leaves the step's session and ignores SIGTERM: the
    worst case for a run worker that dies (fault suite)."""

    marker_dir = Parameter("marker-dir", default="")
    width = Parameter("width", default=4)
    hold = Parameter("hold", default=120)

    @step
    def start(self):
        self.items = list(range(self.width))
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
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.value = self.input * 2
        if self.holds and self.input > 0:
            # `release` lets every held body go on, `release-<item>` that item's
            release = os.path.join(self.marker_dir, "release")
            mine = f"{release}-{self.input}"
            if not os.path.exists(release):
                child = subprocess.Popen(
                    [sys.executable, "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                    start_new_session=True,
                )
                marker = os.path.join(self.marker_dir, f"body-{self.input}-{current.retry_count}")
                with open(marker + ".tmp", "w") as f:
                    f.write(f"{os.getpid()} {child.pid}\n")
                os.replace(marker + ".tmp", marker)
                deadline = time.time() + self.hold
                while not any(map(os.path.exists, (release, mine))) and time.time() < deadline:
                    time.sleep(0.2)
                child.kill()
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.value for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FaultFlow()
