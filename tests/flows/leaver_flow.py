import os
import subprocess

from metaflow import FlowSpec, Parameter, step


class LeaverFlow(FlowSpec):
    """A step that succeeds leaving a daemon behind: a grandchild in its own session, which
    no process group leads back to; the step's token does (and the step's tree, while the
    step still runs)."""

    marker_dir = Parameter("marker-dir", default="")

    @step
    def start(self):
        self.next(self.leave)

    @step
    def leave(self):
        child = subprocess.Popen(
            ["sleep", "300"],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if self.marker_dir:
            with open(os.path.join(self.marker_dir, "pids.tmp"), "w") as f:
                f.write(f"{child.pid}\n")
            os.replace(os.path.join(self.marker_dir, "pids.tmp"), os.path.join(self.marker_dir, "pids"))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LeaverFlow()
