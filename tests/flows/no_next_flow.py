import functools

from metaflow import FlowSpec, step


def replace_body(func):
    """A user decorator that replaces the step's body: self.next() is never called."""

    @functools.wraps(func)
    def body(self):
        self.replaced = True

    return body


class NoNextFlow(FlowSpec):
    """`python flow.py run` fails after `middle`: Metaflow's runtime checks its transition."""

    @step
    def start(self):
        self.x = 1
        self.next(self.middle)

    @step
    @replace_body
    def middle(self):
        self.next(self.after)

    @step
    def after(self):
        self.reached = True
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NoNextFlow()
