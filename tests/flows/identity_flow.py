from metaflow import FlowSpec, current, get_namespace, step


class IdentityFlow(FlowSpec):
    """Records whom its steps run as."""

    @step
    def start(self):
        self.namespace = current.namespace
        self.client_namespace = get_namespace()
        self.username = current.username
        self.tags = sorted(current.tags)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    IdentityFlow()
