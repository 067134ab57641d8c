import os

from metaflow import Config, FlowSpec, Parameter, config_expr, environment, project, step


def project_name(cfg):
    return cfg.team


@project(name=config_expr("project_name(settings)"))
class ConfigFlow(FlowSpec):
    """Configs resolved at create: defaults, files, --config-value, config_expr."""

    settings = Config("settings", default_value={"team": "default_team", "size": 3})
    extra = Config("extra", default="extra.json")
    note = Parameter("note", default="")

    @environment(vars={"FROM_CONFIG": config_expr("str(settings.size)")})
    @step
    def start(self):
        self.size = self.settings.size
        self.extra_value = self.extra.value
        self.env_size = os.environ.get("FROM_CONFIG")
        self.items = list(range(self.settings.size))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.seen = (self.settings.team, self.extra.value)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.seen = sorted({i.seen for i in inputs})
        self.next(self.end)

    @step
    def end(self):
        from metaflow import current

        self.branch = current.branch_name


if __name__ == "__main__":
    ConfigFlow()
