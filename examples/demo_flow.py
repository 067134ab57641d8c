"""Demo flow: a parallel foreach (train one model per learning rate) and a static branch."""

from metaflow import FlowSpec, Parameter, step


class DemoFlow(FlowSpec):
    """Train a toy model per learning rate in parallel, keep the best, report two ways."""

    epochs = Parameter("epochs", default=20, help="gradient steps per model")
    target = Parameter("target", default=3.0, help="the value the toy model should learn")

    @step
    def start(self):
        self.learning_rates = [0.01, 0.05, 0.1, 0.3]
        self.next(self.train, foreach="learning_rates")

    @step
    def train(self):
        """Fit w to minimise (w - target)^2 by gradient descent."""
        self.lr = self.input
        w = 0.0
        for _ in range(self.epochs):
            w -= self.lr * 2 * (w - self.target)
        self.weight = round(w, 6)
        self.loss = round((w - self.target) ** 2, 8)
        print(f"lr={self.lr}: weight={self.weight} loss={self.loss}")
        self.next(self.pick)

    @step
    def pick(self, inputs):
        best = min(inputs, key=lambda i: i.loss)
        self.best_lr, self.best_loss = best.lr, best.loss
        self.losses = {i.lr: i.loss for i in inputs}
        self.next(self.report)

    @step
    def report(self):
        """Branch out: two independent reports run in parallel."""
        self.next(self.report_text, self.report_table)

    @step
    def report_text(self):
        self.summary = f"best learning rate {self.best_lr} (loss {self.best_loss})"
        self.next(self.collect)

    @step
    def report_table(self):
        self.table = sorted(self.losses.items())
        self.next(self.collect)

    @step
    def collect(self, inputs):
        self.merge_artifacts(inputs)
        self.next(self.end)

    @step
    def end(self):
        print(self.summary)


if __name__ == "__main__":
    DemoFlow()
