from metaflow import FlowSpec, current, step, trigger_on_finish


@trigger_on_finish(flow="AssetUpFlow")
class AssetDownFlow(FlowSpec):
    """Starts when AssetUpFlow succeeds; reads its score."""

    @step
    def start(self):
        run = current.trigger.run
        self.upstream = run.pathspec
        self.upstream_score = run.data.score
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    AssetDownFlow()
