"""`dagster-metaflow publish-event NAME [--payload JSON] [--field key=value ...]`: publish a
Metaflow event to the Dagster instance (DAGSTER_HOME) from the shell."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dagster-metaflow")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser(
        "publish-event", help="Publish an event that @trigger deployments wait for."
    )
    pub.add_argument("name", help="event name, e.g. data.updated")
    pub.add_argument("--payload", default=None, help="JSON object with the event's fields")
    pub.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one payload field (repeatable; VALUE is JSON if it parses, else text)",
    )
    args = parser.parse_args(argv)
    try:
        payload = json.loads(args.payload) if args.payload else {}
        if not isinstance(payload, dict):
            raise ValueError("--payload must be a JSON object")
        for item in args.field:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--field {item!r}: expected KEY=VALUE")
            try:
                payload[key] = json.loads(text)
            except ValueError:
                payload[key] = text
        from .runtime.sensors import publish_event

        event_id = publish_event(args.name, payload)
    except ValueError as exc:
        print(f"dagster-metaflow: {exc}", file=sys.stderr)
        return 1
    print(f"Published event {args.name} ({event_id}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
