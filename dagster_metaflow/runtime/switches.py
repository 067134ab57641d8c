"""The runtime's on/off environment variables, all read one way: unset or empty keeps the
default, `0`/`false`/`no`/`off` (any case, spaces around ignored) turn one off, any other
value turns it on."""

from __future__ import annotations

import os

__all__ = ["FORK_VAR", "OFF_WORDS", "SYNC_EVENTS_VAR", "switch"]

# steps (and run workers) forked from a preloaded interpreter; 0: plain `python flow.py step`
FORK_VAR = "DAGSTER_METAFLOW_FORK"
# 1: every event written in place (no deferred event writer), the comparison the tests make
SYNC_EVENTS_VAR = "DAGSTER_METAFLOW_SYNC_EVENTS"
OFF_WORDS = ("0", "false", "no", "off")


def switch(name: str, default: bool) -> bool:
    """The switch `name` from the environment."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in OFF_WORDS
