"""Run-end notifications: the options `create` accepts, each service's payload against its
documented format, and the once-per-run bookkeeping against a real instance and a local
HTTP server standing in for the services."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, DagsterRun
from services import WebhookServer

from dagster_metaflow.errors import CompileError
from dagster_metaflow.notifications import Notifications, notifications_from_options
from dagster_metaflow.runtime.notify import (
    TAG_NOTIFIED,
    RunEnd,
    incident_io_alert,
    notify,
    pager_duty_event,
    slack_message,
)

FAILED = RunEnd(
    flow="MyFlow",
    run_id="dagster-0123456789ab",
    dagster_run_id="01234567-89ab-cdef-0123-456789abcdef",
    successful=False,
    reason="Metaflow step 'train' (task dagster-0123456789ab/train/train) exited with code 1. builtins.ValueError: bad",
    project="proj",
    branch="user.me",
)
SUCCEEDED = RunEnd(flow="MyFlow", run_id="dagster-0123456789ab", dagster_run_id="r", successful=True)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"on_error": True}, "need a service"),
        ({"slack_webhook_url": "https://hooks"}, "neither --notify-on-error nor --notify-on-success"),
        ({"on_error": True, "incident_io_api_key": "k"}, "--incident-io-alert-source-config-id"),
        ({"on_error": True, "slack_webhook_url": "u", "incident_io_metadata": ["a=1"]}, "need --notify-incident-io-api-key"),
        (
            {"on_error": True, "incident_io_api_key": "k", "incident_io_alert_source_config_id": "s", "incident_io_metadata": ["novalue"]},
            "expected Key=Value",
        ),
        (
            {"on_error": True, "incident_io_api_key": "k", "incident_io_alert_source_config_id": "s", "incident_io_metadata": ["a=1", "a=2"]},
            "given twice",
        ),
    ],
)
def test_create_refuses_notification_options_that_cannot_work(kwargs: dict, error: str) -> None:
    with pytest.raises(CompileError, match=error):
        notifications_from_options(**kwargs)


def test_create_keeps_what_was_asked() -> None:
    assert notifications_from_options() is None
    n = notifications_from_options(
        on_success=True,
        incident_io_api_key="env:KEY",
        incident_io_alert_source_config_id="SRC",
        incident_io_metadata=["team=ml", "url=a=b"],
    )
    assert n == Notifications(
        on_success=True,
        incident_io_api_key="env:KEY",
        incident_io_alert_source_config_id="SRC",
        incident_io_metadata={"team": "ml", "url": "a=b"},
    )
    assert n.services == ("incident_io",) and n.wanted(True) and not n.wanted(False)


def test_slack_message_is_block_kit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_METAFLOW_UI_URL", "http://dagster.example:3000/")
    msg = slack_message(FAILED)
    assert msg["text"] == ":rotating_light: Metaflow run _MyFlow/dagster-0123456789ab_ failed!"
    kinds = [b["type"] for b in msg["blocks"]]
    assert kinds == ["section", "section", "section", "context"]
    assert "builtins.ValueError: bad" in msg["blocks"][1]["text"]["text"]
    assert msg["blocks"][2]["fields"][0] == {"type": "mrkdwn", "text": "*Project:* proj"}
    link = msg["blocks"][3]["elements"][0]["text"]
    assert link == f"<http://dagster.example:3000/runs/{FAILED.dagster_run_id}|Dagster UI>"
    for block in msg["blocks"]:  # Block Kit's limits
        assert len(block.get("text", {}).get("text", "")) <= 3000 and len(block.get("fields", [])) <= 10
    assert slack_message(SUCCEEDED)["text"].startswith(":white_check_mark:")


def test_pager_duty_gets_an_alert_for_a_failure_and_a_change_for_a_success(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_METAFLOW_UI_URL", raising=False)
    path, body = pager_duty_event(FAILED, "rk")
    assert path == "/v2/enqueue"
    assert body["routing_key"] == "rk" and body["event_action"] == "trigger"
    assert body["dedup_key"] == "MyFlow/dagster-0123456789ab"
    payload = body["payload"]
    assert set(payload) == {"summary", "source", "severity", "custom_details"}
    assert payload["severity"] in ("critical", "error", "warning", "info") and len(payload["summary"]) <= 1024
    assert payload["custom_details"]["Error"] == FAILED.reason and body["links"] == []
    path, body = pager_duty_event(SUCCEEDED, "rk")
    assert path == "/v2/change/enqueue" and "event_action" not in body
    assert body["payload"]["summary"] == "Metaflow run MyFlow/dagster-0123456789ab succeeded"


def test_incident_io_alert_event_has_the_documented_fields() -> None:
    body = incident_io_alert(FAILED, {"team": "ml"})
    assert body["status"] in ("firing", "resolved") and body["title"] == "Flow MyFlow has failed."
    assert body["deduplication_key"] == "MyFlow/dagster-0123456789ab"
    assert body["metadata"] == {"team": "ml", "run_status": "failed", "flow_name": "MyFlow", "run_id": "dagster-0123456789ab"}
    assert "builtins.ValueError: bad" in body["description"]


def test_each_service_is_told_once_and_a_failed_one_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    with WebhookServer() as good, WebhookServer(status=500) as bad, DagsterInstance.ephemeral() as instance:
        monkeypatch.setenv("DAGSTER_METAFLOW_PAGERDUTY_URL", good.url + "/pd")
        monkeypatch.setenv("SLACK_HOOK", bad.url + "/slack")
        run = instance.add_run(DagsterRun(job_name="j", run_id="01234567-89ab-cdef-0123-456789abcdef"))
        n = Notifications(on_error=True, slack_webhook_url="env:SLACK_HOOK", pager_duty_integration_key="rk")
        lines: list[tuple[str, bool]] = []
        assert notify(instance, run, n, FAILED, lambda t, ok: lines.append((t, ok))) == ["pager_duty"]
        assert ("notification of MyFlow/dagster-0123456789ab (failed) not sent: Slack: HTTP 500 Internal Server Error", False) in lines
        assert instance.get_run_by_id(run.run_id).tags[TAG_NOTIFIED] == f"{run.run_id}:failed:pager_duty"
        # the next sender (the daemon's sensor) tries Slack again, not PagerDuty
        monkeypatch.setenv("SLACK_HOOK", good.url + "/slack")
        assert notify(instance, run, n, FAILED) == ["slack"]
        assert notify(instance, run, n, FAILED) == []
        assert good.paths()[:2] == ["/pd/v2/enqueue", "/slack"] and bad.paths() == ["/slack"]
        assert instance.get_run_by_id(run.run_id).tags[TAG_NOTIFIED] == f"{run.run_id}:failed:pager_duty,slack"
        # another outcome of the same run is news; a child run inheriting the tag is too
        n_both = Notifications(on_error=True, on_success=True, pager_duty_integration_key="rk")
        assert notify(instance, run, n_both, SUCCEEDED) == ["pager_duty"]
        child = instance.add_run(
            DagsterRun(job_name="j", run_id="21234567-89ab-cdef-0123-456789abcdef", tags={TAG_NOTIFIED: f"{run.run_id}:failed:pager_duty"})
        )
        assert notify(instance, child, n, FAILED) == ["slack", "pager_duty"]
        # a malformed URL is a warning naming the service, never the URL (a secret)
        lines.clear()
        for i, url in enumerate(("htp:/secret-hook", "hooks.slack.com/secret-hook", "http://[secret-hook")):
            odd = instance.add_run(DagsterRun(job_name="j", run_id=f"3123456{i}-89ab-cdef-0123-456789abcdef"))
            lines.clear()
            n_odd = Notifications(on_error=True, slack_webhook_url=url, pager_duty_integration_key="rk")
            assert notify(instance, odd, n_odd, FAILED, lambda t, ok: lines.append((t, ok))) == ["pager_duty"]
            assert "Slack: " in lines[0][0] and "secret-hook" not in str(lines), lines
        # a secret named by env: that is not set is said, not sent
        monkeypatch.delenv("SLACK_HOOK")
        other = instance.add_run(DagsterRun(job_name="j", run_id="11234567-89ab-cdef-0123-456789abcdef"))
        lines.clear()
        notify(instance, other, Notifications(on_error=True, slack_webhook_url="env:SLACK_HOOK"), FAILED, lambda t, ok: lines.append((t, ok)))
        assert lines == [("notification of MyFlow/dagster-0123456789ab (failed) not sent: Slack: environment variable SLACK_HOOK is not set", False)]
        # not asked for this outcome: nothing sent
        assert notify(instance, other, n, SUCCEEDED) == []


def test_run_finished_events_are_named_and_filled_as_argo_emits_them() -> None:
    from dagster_metaflow.runtime.sensors import run_finished_event_names, run_finished_payload

    assert run_finished_event_names("Up", "end", None, None) == ["metaflow.Up.end"]
    assert run_finished_event_names("Up", "finish", "proj", "user.me") == [
        "metaflow.proj.user.me.Up.finish",
        "metaflow.proj.user.me.Up.end",
    ]
    payload = run_finished_payload("Up", "dagster-1", "end", "end", "proj", "prod")
    assert payload["pathspec"] == payload["id"] == "Up/dagster-1/end/end"
    assert payload["run_id"] == "dagster-1" and payload["flow_name"] == "Up"
    assert payload["project_flow_name"] == "proj.prod.Up" and payload["is_production"] == "True"
    assert payload["is_user_branch"] == "False" and payload["auto-generated-by-metaflow"] == "True"
    assert "project_name" not in run_finished_payload("Up", "r", "end", "end", None, None)
