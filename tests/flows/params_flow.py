from metaflow import FlowSpec, JSONType, Parameter, step


class ParamsFlow(FlowSpec):
    """Every parameter type the compiler maps to a typed Dagster Config field."""

    alpha = Parameter("alpha", default=0.5, help="a float")
    count = Parameter("count", default=3, type=int)
    flag = Parameter("flag", default=False, type=bool)
    label = Parameter("label", default="it's \"quoted\"")
    learning_rate = Parameter("learning-rate", default=0.01)
    config_json = Parameter("config-json", type=JSONType, default='{"a": [1, 2]}')
    maybe = Parameter("maybe", type=str, default=None)
    needed = Parameter("needed", type=int, required=True)

    @step
    def start(self):
        self.seen = {
            "alpha": self.alpha,
            "count": self.count,
            "flag": self.flag,
            "label": self.label,
            "learning_rate": self.learning_rate,
            "config_json": self.config_json,
            "maybe": self.maybe,
            "needed": self.needed,
        }
        self.next(self.end)

    @step
    def end(self):
        print("seen", self.seen)


if __name__ == "__main__":
    ParamsFlow()
