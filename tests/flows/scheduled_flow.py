from metaflow import FlowSpec, schedule, step


@schedule(cron="* * * * *")
class ScheduledFlow(FlowSpec):
    """Runs every minute while dagster-daemon runs."""

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ScheduledFlow()
