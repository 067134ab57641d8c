import ctypes

from metaflow import FlowSpec, step


class SegfaultFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.crash)

    @step
    def crash(self):
        print("before the crash", flush=True)
        ctypes.string_at(0)  # reads address 0: SIGSEGV
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    SegfaultFlow()
