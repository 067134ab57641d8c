from metaflow import FlowSpec, Parameter, card, current, step
from metaflow.cards import Markdown


class AssetUpFlow(FlowSpec):
    """Produces a model and its score (declared as assets); fails when asked (--fail)."""

    fail = Parameter("fail", type=bool, default=False)

    @card(type="blank")
    @step
    def start(self):
        if self.fail:
            raise RuntimeError("AssetUpFlow asked to fail")
        self.model = {"w": [1, 2, 3]}
        self.score = 0.93
        current.card.append(Markdown("# model w=[1, 2, 3], score 0.93"))
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    AssetUpFlow()
