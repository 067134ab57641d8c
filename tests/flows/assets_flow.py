from decimal import Decimal

from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown


class Thing:
    """Pickled as `__main__.Thing`: a reader outside the flow cannot unpickle it."""

    def __init__(self, n):
        self.n = n


class AssetsFlow(FlowSpec):
    """Artifacts of every preview kind, a carded producer step, a plain one."""

    @card(type="blank")
    @step
    def start(self):
        self.count = 42
        self.ratio = 0.25
        self.flag = True
        self.label = "hello"
        self.long_text = "x" * 50_000
        self.config = {"a": 1, "b": [1, 2], "c": {"d": None}}
        self.items = [1, "two", 3.0]
        self.big_list = list(range(100_000))
        self.amount = Decimal("1.50")
        self.thing = Thing(3)
        self.blob = bytes(2_000_000)
        current.card.append(Markdown("# assets"))
        self.next(self.middle)

    @step
    def middle(self):
        self.later = "made in middle"
        try:
            import pandas as pd
        except ImportError:
            pass
        else:
            self.frame = pd.DataFrame(
                {
                    "x": list(range(10)),
                    "y": [f"r{i}" for i in range(10)],
                    "z": [i / 2 for i in range(10)],
                }
            )
        self.next(self.end)

    @step
    def end(self):
        self.final = self.count + 1


if __name__ == "__main__":
    AssetsFlow()
