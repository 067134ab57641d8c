from metaflow import FlowSpec, current, parallel, step


class ParallelFlow(FlowSpec):
    """@parallel: one control task and its workers (Metaflow's local unbounded foreach)."""

    @step
    def start(self):
        self.base = 10
        self.next(self.train, num_parallel=3)

    @parallel
    @step
    def train(self):
        self.node = current.parallel.node_index
        self.nodes = current.parallel.num_nodes
        self.value = self.base + self.node
        self.next(self.gather)

    @step
    def gather(self, inputs):
        self.values = sorted(i.value for i in inputs)
        self.nodes = sorted(i.node for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ParallelFlow()
