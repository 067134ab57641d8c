from metaflow import FlowSpec, pypi, step


class PypiFlow(FlowSpec):
    """A step in a @pypi environment (created with micromamba, as `flow.py run` does)."""

    @step
    def start(self):
        self.next(self.work)

    @pypi(packages={"six": "1.16.0"})
    @step
    def work(self):
        import six

        self.version = six.__version__
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    PypiFlow()
