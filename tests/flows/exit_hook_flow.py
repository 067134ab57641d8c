import os
import time

from metaflow import FlowSpec, Parameter, exit_hook, step


def _record(kind, run):
    # the hook runs in the flow's directory, once, after the run ended
    with open(f"hook-{kind}-{run.id}", "w") as f:
        f.write(f"{kind} {run.pathspec} successful={run.successful}\n")
    print(f"hook {kind} saw {run.pathspec}")


def on_ok(run=None):
    _record("success", run)


def on_fail(run=None):
    _record("error", run)


@exit_hook(on_success=[on_ok], on_error=[on_fail])
class ExitHookFlow(FlowSpec):
    """Exit hooks after success, failure (--fail) and termination (--sleep N)."""

    fail = Parameter("fail", type=bool, default=False)
    sleep = Parameter("sleep", type=int, default=0)

    @step
    def start(self):
        with open(f"pid-{os.getpid()}", "w"):
            pass
        time.sleep(self.sleep)
        if self.fail:
            raise RuntimeError("asked to fail")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ExitHookFlow()
