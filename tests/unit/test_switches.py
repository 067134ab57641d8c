"""The runtime's environment switches read one way (`runtime.switches`): unset or empty
keeps the default, the off words turn a switch off, anything else turns it on."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagster_metaflow.runtime.event_writer import deferred_writes_enabled
from dagster_metaflow.runtime.switches import FORK_VAR, SYNC_EVENTS_VAR, switch
from dagster_metaflow.runtime.zygote import fork_enabled


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        (None, True, True),
        (None, False, False),
        ("", True, True),
        ("  ", False, False),
        ("0", True, False),
        (" Off ", True, False),
        ("FALSE", True, False),
        ("no", True, False),
        ("1", False, True),
        ("yes", False, True),
        ("on", False, True),
    ],
)
def test_a_switch_reads_its_variable_one_way(
    monkeypatch: pytest.MonkeyPatch, value: str | None, default: bool, expected: bool
) -> None:
    if value is None:
        monkeypatch.delenv("DM_TEST_SWITCH", raising=False)
    else:
        monkeypatch.setenv("DM_TEST_SWITCH", value)
    assert switch("DM_TEST_SWITCH", default) is expected


def test_forking_is_on_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FORK_VAR, raising=False)
    assert fork_enabled()
    monkeypatch.setenv(FORK_VAR, "")
    assert fork_enabled()
    monkeypatch.setenv(FORK_VAR, "0")
    assert not fork_enabled()


def test_events_are_deferred_unless_sync_is_asked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dagster import DagsterInstance

    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        for value, deferred in ((None, True), ("", True), ("off", True), ("1", False)):
            if value is None:
                monkeypatch.delenv(SYNC_EVENTS_VAR, raising=False)
            else:
                monkeypatch.setenv(SYNC_EVENTS_VAR, value)
            assert deferred_writes_enabled(instance) is deferred, value
