"""Why a run failed, in one line, kept on the run itself (Argo's error capture, on by
default): the first failed op's task and the user's error line, as a run tag that `status`,
`trigger --wait`, the Deployer and the Dagster UI read."""

from __future__ import annotations

from typing import Any

TAG_ERROR = "dagster-metaflow/error"  # the first failure of a failed run, one line
TAG_TIMED_OUT = "dagster-metaflow/timed-out"  # "true": stopped by its --workflow-timeout
MAX_REASON = 1000  # characters kept in the tag


def failure_reason(event: Any) -> str:
    """One line saying why an op failed: the task and the user's error line when it ran a
    Metaflow task (attempt.py writes them first in the op's failure), else Dagster's message."""
    data = event.step_failure_data
    user = getattr(data, "user_failure_data", None) if data is not None else None
    text = (user.description if user is not None else None) or (
        data.error.message if data is not None and data.error is not None else ""
    )
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return f"op {event.step_key} failed"
    if len(lines) > 1 and not lines[1].startswith("Last lines of stderr"):
        return f"{lines[0]} {lines[1]}"[:MAX_REASON]
    return lines[0][:MAX_REASON]


__all__ = ["MAX_REASON", "TAG_ERROR", "TAG_TIMED_OUT", "failure_reason"]
