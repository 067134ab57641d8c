from metaflow import FlowSpec, Parameter, current, step, trigger


@trigger(event={"name": "data.ready", "parameters": {"alpha": "a"}})
class TriggeredFlow(FlowSpec):
    """Starts when the event data.ready is published; alpha comes from its field `a`."""

    alpha = Parameter("alpha", type=float, default=0.5)

    @step
    def start(self):
        self.seen_alpha = self.alpha
        event = current.trigger.event if current.get("trigger") else None
        self.event_name = event.name if event else None
        self.event_id = event.id if event else None
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TriggeredFlow()
