"""Deployment records that are corrupt, incomplete, written concurrently, deleted while runs
go on, or pointing at another definitions file: one line and a way out, never a traceback,
never a lost deployment, never another flow run under this deployment's name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Workspace

from dagster_metaflow import definitions_file, deployments, tokens
from dagster_metaflow.deployments import (
    RECORD_PREFIX,
    CorruptRecord,
    CorruptRecordWarning,
    Deployment,
)


def _dep(name: str, **kw: Any) -> Deployment:
    base: dict[str, Any] = dict(
        flow_name="F", flow_file="/x/f.py", definitions_file=f"/x/{name}.py", owner="alice", production_token="tok"
    )
    base.update(kw)
    return Deployment(name=name, **base)


@pytest.fixture
def instance(tmp_path: Path) -> Any:
    with deployments.open_instance(str(tmp_path / "home")) as inst:
        yield inst


def _corrupt(instance: Any, name: str, text: str) -> None:
    instance.run_storage.set_cursor_values({RECORD_PREFIX + name: text})


# -- unit: a real SQLite instance ------------------------------------------------------


def test_corrupt_and_incomplete_records_are_one_line_and_skipped(instance: Any) -> None:
    deployments.put(instance, _dep("Good"))
    cases = {
        "NotJson": ("{not json", "not JSON"),
        "Missing": ('{"name": "Missing", "owner": "bob", "production_token": "t"}', "missing flow_name, flow_file, definitions_file"),
        "List": ("[1, 2]", "a JSON list"),
        "Other": (_dep("Good").to_json(), "it holds deployment 'Good'"),
        "BadParams": (json.dumps({**json.loads(_dep("BadParams").to_json()), "parameters": [1]}), "TypeError"),
    }
    for name, (text, _) in cases.items():
        _corrupt(instance, name, text)
    for name, (_, why) in cases.items():
        with pytest.raises(CorruptRecord) as err:
            deployments.get(instance, name)
        message = str(err.value)
        assert "\n" not in message and why in message, message
        assert f"'{RECORD_PREFIX}{name}'" in message
        assert "dagster create --force` overwrites it" in message and "dagster delete` removes it" in message
    # what authorization needs survives in an incomplete record
    with pytest.raises(CorruptRecord) as err:
        deployments.get(instance, "Missing")
    assert err.value.partial is not None and err.value.partial.owner == "bob"

    with pytest.warns(CorruptRecordWarning) as caught:
        assert [d.name for d in deployments.list_all(instance)] == ["Good"]
    assert len(caught) == len(cases)
    seen: list[str] = []
    assert deployments.list_names(instance, warn=seen.append) == ["Good"]
    assert len(seen) == len(cases) and all(s.startswith("skipped deployment record") for s in seen)

    # delete removes a corrupt record, keeping what could be read as the tombstone
    deployments.remove(instance, "Missing")
    deployments.remove(instance, "NotJson")
    assert deployments.get(instance, "Missing") is None and deployments.get(instance, "NotJson") is None
    tomb = deployments.deleted(instance, "Missing")
    assert tomb is not None and tomb.owner == "bob"
    # put overwrites a corrupt record (`create --force`)
    deployments.put(instance, _dep("List"))
    assert deployments.get(instance, "List") == _dep("List")


def test_records_are_listed_by_prefix_old_index_still_read(instance: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # written as the previous version did: the record, and the name in the index key
    old = _dep("Old")
    instance.run_storage.set_cursor_values({RECORD_PREFIX + "Old": old.to_json()})
    instance.run_storage.set_cursor_values({deployments.INDEX_KEY: json.dumps(["Old", "Gone"])})
    # a key that only looks like the prefix to SQL's LIKE (`_` is a wildcard there)
    instance.run_storage.set_cursor_values({"dagster_metaflowXdeployment/Fake": _dep("Fake").to_json()})
    deployments.put(instance, _dep("New"))
    assert deployments.list_names(instance) == ["New", "Old"]
    assert json.loads(deployments._get(instance, deployments.INDEX_KEY) or "[]") == ["New", "Old"]
    deployments.remove(instance, "New")
    assert deployments.list_names(instance) == ["Old"]
    assert deployments.deleted(instance, "New") == _dep("New")
    # a run storage that cannot list keys: the index is the listing
    monkeypatch.setattr(deployments, "_scan", lambda inst, prefix: None)
    deployments.put(instance, _dep("Third"))
    assert deployments.list_names(instance) == ["Old", "Third"]


def test_ephemeral_instance_lists_by_prefix() -> None:
    from dagster import DagsterInstance

    with DagsterInstance.ephemeral() as inst:
        deployments.put(inst, _dep("A"))
        assert deployments._scan(inst, RECORD_PREFIX) is not None
        assert deployments.list_names(inst) == ["A"]


_WRITER = """
import sys, time
from pathlib import Path
from dagster_metaflow import deployments
home, who, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
with deployments.open_instance(home) as instance:
    (go.parent / f"ready-{who}").write_text("")
    while not go.exists():
        time.sleep(0.01)
    for i in range(3):
        name = f"Flow{who}_{i}"
        definitions = Path(home).parent / f"{name}.py"
        definitions.write_text("")
        deployments.put(instance, deployments.Deployment(name=name, flow_name=name, flow_file="f.py",
            definitions_file=str(definitions), owner="u", production_token="t"))
"""


def test_concurrent_creates_never_lose_a_deployment(tmp_path: Path) -> None:
    """8 processes record 3 deployments each into one SQLite instance at the same moment."""
    home = tmp_path / "home"
    deployments.ensure_home(str(home))
    go = tmp_path / "go"
    env = dict(os.environ, DAGSTER_HOME=str(home))
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(home), str(i), str(go)], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < len(procs):  # all imported, instance open
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.write_text("")
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    expected = sorted(f"Flow{w}_{i}" for w in range(8) for i in range(3))
    with deployments.open_instance(str(home)) as instance:
        assert deployments.list_names(instance) == expected
        assert json.loads(deployments._get(instance, deployments.INDEX_KEY) or "[]") == expected
        workspace = Path(deployments.workspace_path(instance)).read_text()
    assert all(f"{name}.py" in workspace for name in expected)


def test_definitions_file_is_checked_against_the_record(tmp_path: Path) -> None:
    path = tmp_path / "defs.py"
    dep = _dep("Job", flow_name="MyFlow", definitions_file=str(path), flow_fingerprint="a" * 64, flow_file="/x/my_flow.py")
    body = 'FLOW = MetaflowFlow(name={flow!r}, file="f.py", flow_fingerprint={fp!r})\n\n@job(name={job!r})\ndef Job():\n    pass\n'
    path.write_text(body.format(flow="MyFlow", fp="a" * 64, job="Job"))
    assert definitions_file.definitions_problem(dep) is None
    for flow, fp, job, why in [
        ("OtherFlow", "a" * 64, "Job", "flow OtherFlow (recorded: MyFlow)"),
        ("MyFlow", "b" * 64, "Job", "flow fingerprint bbbbbbbbbbbb (recorded: aaaaaaaaaaaa)"),
        ("MyFlow", "a" * 64, "Other", "job Other (recorded: Job)"),
    ]:
        path.write_text(body.format(flow=flow, fp=fp, job=job))
        problem = definitions_file.definitions_problem(dep)
        assert problem and "\n" not in problem and why in problem, problem
        assert f"the definitions file {path} does not belong to deployment 'Job'" in problem
        assert "python my_flow.py dagster create" in problem
    path.write_text("def broken(:\n")
    assert "is not valid Python" in (definitions_file.definitions_problem(dep) or "")
    path.unlink()
    assert "cannot read the definitions file" in (definitions_file.definitions_problem(dep) or "")


def test_authorization_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metaflow.plugins.aws.step_functions.production_token import store_token

    monkeypatch.setenv("METAFLOW_HOME", str(tmp_path / "mf"))
    dep = _dep("Job", owner="alice", production_token="tok-1")
    problem = tokens.authorization_problem
    assert problem(dep, None, "alice", "delete") is None
    assert problem(dep, "tok-1", "mallory", "delete") is None
    assert problem(dep, "production:tok-1", None, "delete") is None
    refusal = problem(dep, None, "mallory", "terminate")
    assert refusal == (
        "deployment 'Job' was created by 'alice'; to terminate it you need its production token: "
        "ask them for it, then run `dagster terminate --authorize TOKEN` "
        "(Deployer API: `terminate(authorize=TOKEN)`)"
    )
    assert problem(dep, "wrong", "mallory", "delete") is not None
    assert problem(dep, None, None, "delete") is not None  # no user name: the token is needed
    store_token(tokens.token_prefix("Job"), "tok-1")  # as an earlier `create --authorize`
    assert problem(dep, None, "mallory", "delete") is None
    assert problem(None, None, "mallory", "delete") is None


# -- end to end ------------------------------------------------------------------------


def _instance(ws: Workspace) -> Any:
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(ws.dagster_home))


def _one_line_failure(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr[-3000:])


@pytest.mark.e2e
@pytest.mark.flow("linear_flow.py")
def test_corrupt_records_and_a_foreign_definitions_file(workspace: Workspace) -> None:
    from metaflow.runner.deployer import DeployedFlow

    out = workspace.compile()
    with _instance(workspace) as instance:
        _corrupt(instance, "Broken", "{not json")
        _corrupt(instance, "Partial", json.dumps({"name": "Partial", "owner": os.environ["METAFLOW_USER"], "production_token": "t"}))
    os.environ["DAGSTER_HOME"] = str(workspace.dagster_home)
    try:
        with pytest.warns(CorruptRecordWarning) as caught:
            assert [f.name for f in DeployedFlow.list_deployed_flows(impl="dagster")] == ["LinearFlow"]
    finally:
        del os.environ["DAGSTER_HOME"]
    skipped = [str(w.message) for w in caught if issubclass(w.category, CorruptRecordWarning)]
    assert sorted(m.split("'")[1] for m in skipped) == [RECORD_PREFIX + "Broken", RECORD_PREFIX + "Partial"]

    res = workspace.metaflow("dagster", "--name", "Broken", "trigger", check=False)
    _one_line_failure(res, f"'{RECORD_PREFIX}Broken'", "python linear_flow.py dagster create --force` overwrites it")
    workspace.metaflow("dagster", "--name", "Broken", "delete")
    res = workspace.metaflow("dagster", "--name", "Partial", "create", "partial.py", check=False)
    _one_line_failure(res, f"'{RECORD_PREFIX}Partial'", "missing flow_name")
    workspace.metaflow("dagster", "--name", "Partial", "create", "partial.py", "--force")
    assert "Deployment Partial (flow LinearFlow" in workspace.metaflow("dagster", "--name", "Partial", "describe").stdout

    # the record now points at another flow's file whose job has the same name
    other = workspace.dir / "other_dagster.py"
    text = out.read_text()
    fingerprint = text.split('flow_fingerprint="')[1].split('"')[0]
    head, flow_call = text.split("MetaflowFlow(", 1)
    flow_call = flow_call.replace('name="LinearFlow"', 'name="OtherFlow"', 1).replace(fingerprint, "0" * 64)
    other.write_text(head + "MetaflowFlow(" + flow_call)
    with _instance(workspace) as instance:
        dep = deployments.get(instance, "LinearFlow")
        assert dep is not None
        from dataclasses import replace

        deployments.put(instance, replace(dep, definitions_file=str(other)))
    res = workspace.metaflow("dagster", "trigger", check=False)
    _one_line_failure(res, f"the definitions file {other} does not belong to deployment 'LinearFlow'", "flow OtherFlow (recorded: LinearFlow)", "flow fingerprint 000000000000")
    with _instance(workspace) as instance:
        assert list(instance.get_runs()) == []


@pytest.mark.e2e
@pytest.mark.flow("sleepy_flow.py")
def test_runs_of_a_deleted_deployment_stay_reachable(workspace: Workspace) -> None:
    workspace.flow.write_text(workspace.flow.read_text().replace("@timeout(seconds=4)", ""))
    workspace.compile()
    workspace.metaflow("dagster", "trigger", "--run-id-file", "rid")
    mf_run_id = (workspace.dir / "rid").read_text()
    res = workspace.metaflow("dagster", "delete")
    assert f"1 run(s) still in progress go on: {mf_run_id}" in res.stderr + res.stdout
    status = workspace.metaflow("dagster", "status", "--run-id", mf_run_id)
    assert f"SleepyFlow/{mf_run_id}: " in status.stdout and "(deleted?)" in status.stderr
    assert mf_run_id in workspace.metaflow("dagster", "list-runs").stdout
    # the tombstone keeps the owner and token: someone else still needs the token
    res = workspace.metaflow("dagster", "terminate", "--run-id", mf_run_id, check=False,
                             METAFLOW_USER="mallory", METAFLOW_HOME=str(workspace.dir / "mallory"))
    _one_line_failure(res, "to terminate it you need its production token")
    assert "terminated" in workspace.metaflow("dagster", "terminate", "--run-id", mf_run_id).stderr
    assert "ABORTED" in workspace.metaflow("dagster", "status", "--run-id", mf_run_id).stdout
