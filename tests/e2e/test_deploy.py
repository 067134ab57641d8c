"""Operating deployed flows: create/trigger/status/terminate/list-runs/resume/delete, the
Deployer API, production tokens, attribution, the queued path with a real dagster-daemon, and
Dagster re-execution as a new Metaflow run with clones."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import BIN, Workspace, chunked_env, short_key, survivors
from services import WebhookServer

from dagster_metaflow.runtime import metaflow_run_id

pytestmark = pytest.mark.e2e


def _instance(ws: Workspace) -> Any:
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(ws.dagster_home))


def _wait_finished(ws: Workspace, dagster_run_id: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    with _instance(ws) as instance:
        while True:
            run = instance.get_run_by_id(dagster_run_id)
            if run is not None and run.is_finished:
                return run
            assert time.monotonic() < deadline, f"run {dagster_run_id} still {run and run.status}"
            time.sleep(0.5)


def _materialized_run(ws: Workspace, key: str = "DeployFlow") -> str | None:
    """The Metaflow run the flow's asset was last materialized by (None: never)."""
    from dagster import AssetKey

    with _instance(ws) as instance:
        event = instance.get_latest_materialization_event(AssetKey([key]))
    if event is None or event.asset_materialization is None:
        return None
    return str(event.asset_materialization.metadata["metaflow/run_pathspec"].value)


def _dagster_run_of(ws: Workspace, mf_run_id: str) -> Any:
    with _instance(ws) as instance:
        for run in instance.get_runs():
            if metaflow_run_id(run.run_id) == mf_run_id:
                return run
    raise AssertionError(f"no Dagster run for {mf_run_id}")


def _tasks(pathspec: str) -> dict[str, Any]:
    from metaflow import Run, namespace

    namespace(None)
    return {t.pathspec.split("/", 2)[2]: t for s in Run(pathspec).steps() for t in s.tasks()}


def _snapshot(pathspec: str) -> dict[str, tuple[Any, ...]]:
    """What must not change in an origin run: every task with its attempt and finish time."""
    return {k: (t.current_attempt, t.finished_at, t.successful) for k, t in _tasks(pathspec).items()}


@pytest.mark.flow("deploy_flow.py")
def test_trigger_typed_parameters_status_and_attribution(workspace: Workspace) -> None:
    from metaflow import Run

    workspace.compile("--tag", "team:x")
    t0 = time.monotonic()
    res = workspace.metaflow(
        "dagster", "trigger", "--alpha", "0.25", "--retry_count", "42", "--payload", '{"k": "v"}',
        "--run-param", "flag=true", "--run-id-file", "run-id",
    )
    assert time.monotonic() - t0 < 60
    mf_run_id = (workspace.dir / "run-id").read_text()
    assert mf_run_id.startswith("dagster-") and "triggered (launched)" in res.stderr + res.stdout
    assert "Validating your flow" not in res.stderr  # it runs the deployed code: no lint
    drun = _dagster_run_of(workspace, mf_run_id)
    assert drun.tags["metaflow/pathspec"] == f"DeployFlow/{mf_run_id}"
    assert _wait_finished(workspace, drun.run_id).status.value == "SUCCESS"

    run = Run(f"DeployFlow/{mf_run_id}", _namespace_check=False)
    assert run.successful
    assert run["start"].task.data.seen == {
        "alpha": 0.25, "retry_count": 42, "payload": {"k": "v"}, "flag": True,
    }
    assert run["join"].task.data.results == [2, 4, 6]
    tags = run.tags
    user = os.environ["METAFLOW_USER"]
    assert {"runtime:dagster", f"user:{user}", "team:x"} <= set(tags)
    assert any(t.startswith("production:") for t in run.system_tags)
    # the Dagster side of every task, as task metadata (the run's tags stay the user's)
    for step in run:
        for task in step:
            meta = task.metadata_dict
            assert meta["dagster-run-id"] == drun.run_id and meta["dagster-job"] == "DeployFlow"
            assert short_key(meta["dagster-step-key"]).startswith(f"op_{step.id}")
    assert run["body"].task.metadata_dict["dagster-step-key"].endswith("]")

    for ident in (mf_run_id, drun.run_id):
        out = workspace.metaflow("dagster", "status", "--run-id", ident).stdout
        assert f"DeployFlow/{mf_run_id}: SUCCEEDED" in out
    listed = workspace.metaflow("dagster", "list-runs", "--succeeded")
    assert "Validating your flow" not in listed.stderr  # read-only: no flow validation
    row = next(ln for ln in listed.stdout.splitlines() if mf_run_id in ln)
    assert row.split()[1] == "SUCCEEDED" and row.split()[-1] == drun.run_id, row  # + start, duration
    failed = workspace.metaflow("dagster", "list-runs", "--failed")
    assert mf_run_id not in failed.stdout and "No FAILED runs of DeployFlow." in failed.stderr
    # a DAGSTER_HOME that does not exist is a typo, not a new instance to read from
    typo = workspace.dir / "dagster_hom"
    res = workspace.metaflow("dagster", "status", "--run-id", mf_run_id, check=False, DAGSTER_HOME=str(typo))
    assert res.returncode != 0 and f"no Dagster instance at {typo}" in res.stderr and not typo.exists()
    res = workspace.metaflow("dagster", "list-runs", check=False, DAGSTER_HOME="relative/home")
    assert res.returncode != 0 and "must be an absolute path" in res.stderr


@pytest.mark.flow("deploy_flow.py")
def test_bad_input_gives_one_line_and_nonzero_exit(workspace: Workspace) -> None:
    res = workspace.metaflow("dagster", "trigger", check=False)
    assert res.returncode != 0 and "no deployment named 'DeployFlow'" in res.stderr
    workspace.compile()
    cases = [
        (("--run-param", "nope=1"), "the flow has no such parameter"),
        (("--run-param", "flag=maybe"), "is not a valid bool"),
        (("--run-param", "payload={bad"), "is not a valid json"),
        (("--alpha", "abc"), "abc"),
    ]
    for args, message in cases:
        res = workspace.metaflow("dagster", "trigger", *args, check=False)
        assert res.returncode != 0 and message in res.stderr, (args, res.stderr[-2000:])
        assert "Traceback" not in res.stderr
    res = workspace.metaflow("dagster", "status", "--run-id", "dagster-000000000000", check=False)
    assert res.returncode != 0 and "no run 'dagster-000000000000'" in res.stderr
    workspace.metaflow("dagster", "delete")
    res = workspace.metaflow("dagster", "trigger", check=False)
    assert res.returncode != 0 and "no deployment named 'DeployFlow'" in res.stderr


@pytest.mark.flow("sleepy_flow.py")
def test_terminate_stops_every_step_process(workspace: Workspace) -> None:
    from metaflow import Run

    workspace.flow.write_text(workspace.flow.read_text().replace("@timeout(seconds=4)", ""))
    workspace.compile()
    workspace.metaflow("dagster", "trigger", "--marker-dir", str(workspace.dir), "--run-id-file", "run-id")
    mf_run_id = (workspace.dir / "run-id").read_text()
    pid_file = workspace.dir / "pids"
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.5)
    pids = [int(p) for p in pid_file.read_text().split()]
    res = workspace.metaflow("dagster", "terminate", "--run-id", mf_run_id)
    assert f"Run SleepyFlow/{mf_run_id} (Dagster run " in res.stderr + res.stdout
    assert not survivors(pids, within=15), "step processes survived terminate"
    drun = _wait_finished(workspace, _dagster_run_of(workspace, mf_run_id).run_id, timeout=15)
    assert drun.status.value == "CANCELED"
    assert not Run(f"SleepyFlow/{mf_run_id}", _namespace_check=False).successful
    out = workspace.metaflow("dagster", "status", "--run-id", mf_run_id).stdout
    assert "ABORTED" in out


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[WebhookServer, WebhookServer]]:
    """A local stand-in for PagerDuty (answers 202) and a Slack webhook that answers 500,
    both reached by every command and run worker the test starts."""
    with WebhookServer() as good, WebhookServer(status=500) as broken:
        for key, value in {**good.env(), "PD_KEY": "routing-key-1"}.items():
            monkeypatch.setenv(key, value)
        yield good, broken


@pytest.mark.flow("deploy_flow.py")
def test_resume_clones_successful_tasks_and_leaves_origin_alone(
    workspace: Workspace, hooks: tuple[WebhookServer, WebhookServer]
) -> None:
    """...and every run (a failed trigger, a failed resume, a successful resume) is announced
    once by its worker; a service that answers 500 is a warning, the others still hear."""
    good, broken = hooks
    (workspace.dir / "fail-2").write_text("")
    notify = ("--notify-on-error", "--notify-on-success", "--notify-pager-duty-integration-key", "env:PD_KEY")
    workspace.compile(*notify, "--notify-slack-webhook-url", broken.url + "/slack", "--no-auto-emit-events")
    marker = ("--marker-dir", str(workspace.dir))
    res = workspace.metaflow("dagster", "trigger", *marker, "--wait", "--run-id-file", "first", check=False)
    assert res.returncode != 0 and "FAILURE" in res.stderr
    assert "has changed since it was deployed" not in res.stderr  # the deployed file: no notice
    origin = (workspace.dir / "first").read_text()
    # the reason is kept on the run (error capture): status and the run's tags show it
    reason = f"Metaflow step 'body' (task {origin}/body/body-1) exited with code 1. builtins.RuntimeError: marker says item 2 fails"
    assert _dagster_run_of(workspace, origin).tags["dagster-metaflow/error"] == reason
    status = workspace.metaflow("dagster", "status", "--run-id", origin)
    assert f"Error: {reason}" in status.stdout + status.stderr
    # the error names the failed task and the user's exception, and the progress line does
    # not count the failed step, nor the steps it kept from running, as done
    assert f"ended with status FAILURE: Metaflow step 'body' (task {origin}/body/body-1)" in res.stderr, res.stderr[-3000:]
    assert "RuntimeError: marker says item 2 fails; " in res.stderr.split("ended with status FAILURE")[1]
    last_progress = [ln for ln in res.stderr.splitlines() if "steps done" in ln][-1]
    assert "steps done 1/4," in last_progress and "failed: " in last_progress, last_progress
    # announced by the worker: PagerDuty gets the reason, Slack's 500 is a warning in the run
    assert good.paths() == ["/pagerduty/v2/enqueue"] and broken.paths() == ["/slack"]
    _path, headers, alert = good.received[0]
    assert alert["routing_key"] == "routing-key-1" and alert["dedup_key"] == f"DeployFlow/{origin}"
    assert alert["payload"]["custom_details"]["Error"] == reason
    failed_run = _dagster_run_of(workspace, origin)
    assert failed_run.tags[".dagster/metaflow-notified"] == f"{failed_run.run_id}:failed:pager_duty"
    # bookkeeping tags are hidden from the UI (Dagster's `.dagster/` prefix); what it shows:
    from dagster._core.storage.tags import TagType, get_tag_type

    shown = {k for k in failed_run.tags if get_tag_type(k) != TagType.HIDDEN}
    assert shown <= {"metaflow/flow", "metaflow/pathspec", "dagster-metaflow/deployment", "dagster-metaflow/error", "dagster/failure_reason", "dagster/code_location"}, shown
    assert {".dagster/metaflow-worker", ".dagster/metaflow-worker-heartbeat"} <= set(failed_run.tags)
    messages = [e.message or "" for e in workspace.dagster_events(failed_run.run_id)]
    assert f"Warning: notification of DeployFlow/{origin} (failed) not sent: Slack: HTTP 500 Internal Server Error" in messages
    assert f"notified pager_duty that DeployFlow/{origin} failed" in messages
    # mistakes in resume's options: one line each, saying what exists
    res = workspace.metaflow("dagster", "resume", "--origin-run-id", "dagster-000000000000", check=False)
    assert res.returncode != 0 and "--origin-run-id: no run DeployFlow/dagster-000000000000 in the datastore" in res.stderr
    assert "dagster list-runs" in res.stderr and "Traceback" not in res.stderr
    res = workspace.metaflow("dagster", "resume", "--origin-run-id", origin, "--step-to-rerun", "bdy", check=False)
    assert res.returncode != 0 and "no step 'bdy'; its steps: start, body, join, end" in res.stderr, res.stderr[-1500:]
    before = _snapshot(f"DeployFlow/{origin}")
    assert before["body/body-1"][2] is False

    # same parameters, marker still there: the same task fails again, the others are clones
    res = workspace.metaflow("dagster", "resume", "--origin-run-id", origin, "--wait", "--run-id-file", "second", check=False)
    assert res.returncode != 0
    assert _materialized_run(workspace) is None  # failed runs materialize nothing
    second = _tasks(f"DeployFlow/{(workspace.dir / 'second').read_text()}")
    assert second["start/start"].metadata_dict.get("origin-run-id") == origin
    assert second["body/body-0"].metadata_dict.get("origin-task-id") == "body-0"
    assert "origin-task-id" not in second["body/body-1"].metadata_dict

    (workspace.dir / "fail-2").unlink()
    workspace.metaflow("dagster", "resume", "--origin-run-id", origin, "--wait", "--run-id-file", "third")
    third_id = (workspace.dir / "third").read_text()
    second_id = (workspace.dir / "second").read_text()
    assert good.paths() == ["/pagerduty/v2/enqueue", "/pagerduty/v2/enqueue", "/pagerduty/v2/change/enqueue"]
    assert [body["payload"]["source"] for _p, _h, body in good.received] == [
        f"DeployFlow/{run}" for run in (origin, second_id, third_id)
    ]
    assert good.received[2][2]["payload"]["summary"] == f"Metaflow run DeployFlow/{third_id} succeeded"
    with _instance(workspace) as instance:  # --no-auto-emit-events: the success published nothing
        from dagster import AssetKey

        assert instance.get_latest_materialization_event(AssetKey(["metaflow_events", "metaflow.DeployFlow.end"])) is None
    assert _materialized_run(workspace) == f"DeployFlow/{third_id}"  # a resume materializes
    third = _tasks(f"DeployFlow/{third_id}")
    assert third["join/join"].data.results == [2, 4, 6]
    origin_tasks = _tasks(f"DeployFlow/{origin}")
    for cloned in ("start/start", "body/body-0", "body/body-2"):
        assert third[cloned].metadata_dict.get("origin-run-id") == origin, cloned
    for cloned in ("body/body-0", "body/body-2"):
        # not executed again: the time written while running is the origin's
        assert third[cloned].data.ran_at == origin_tasks[cloned].data.ran_at
    assert "origin-task-id" not in third["body/body-1"].metadata_dict
    assert _snapshot(f"DeployFlow/{origin}") == before

    # --step-to-rerun: that step and everything after it run again
    workspace.metaflow(
        "dagster", "resume", "--origin-run-id", third_id, "--step-to-rerun", "join", "--wait",
        "--run-id-file", "fourth",
    )
    fourth = _tasks(f"DeployFlow/{(workspace.dir / 'fourth').read_text()}")
    assert fourth["body/body-1"].metadata_dict.get("origin-run-id") == third_id
    assert "origin-task-id" not in fourth["join/join"].metadata_dict
    assert "origin-task-id" not in fourth["end/end"].metadata_dict


@pytest.mark.flow("deploy_flow.py")
@pytest.mark.parametrize("chunks", [False, True], ids=["per-task", "chunked"])
def test_dagster_reexecution_from_failure_is_a_new_metaflow_run(
    workspace: Workspace, chunks: bool, hooks: tuple[WebhookServer, WebhookServer]
) -> None:
    """What the UI's "Re-execute from failure" does, through Dagster's Python API. Chunked
    (two tasks a chunk): the failed chunk op `chunk_body[tasks_2_to_2]` is re-executed, the
    tasks of the chunk that succeeded are cloned, as with one op per task. The child run
    inherits its parent's tags, not its error nor its announcement."""
    good, _broken = hooks
    env = chunked_env(2) if chunks else {}
    (workspace.dir / "fail-3").write_text("")
    out = workspace.compile("--notify-on-error", "--notify-on-success", "--notify-pager-duty-integration-key", "env:PD_KEY")
    workspace.metaflow("dagster", "trigger", "--marker-dir", str(workspace.dir), "--run-id-file", "first", **env)
    origin = (workspace.dir / "first").read_text()
    parent = _wait_finished(workspace, _dagster_run_of(workspace, origin).run_id)
    assert parent.status.value == "FAILURE"
    before = _snapshot(f"DeployFlow/{origin}")
    (workspace.dir / "fail-3").unlink()

    with _instance(workspace) as instance:
        # the UI's re-execution copies the parent's tags (use_parent_run_tags): ours among them
        tags = {k: v for k, v in instance.get_run_by_id(parent.run_id).tags.items() if "metaflow" in k}
    child_id, ok = workspace.reexecute_from_failure(out, "DeployFlow", parent.run_id, tags, **env)
    assert ok
    child = f"DeployFlow/{metaflow_run_id(child_id)}"
    tasks = _tasks(child)
    assert tasks["join/join"].data.results == [2, 4, 6]
    for cloned in ("start/start", "body/body-0", "body/body-1"):
        assert tasks[cloned].metadata_dict.get("origin-run-id") == origin, cloned
    assert "origin-task-id" not in tasks["body/body-2"].metadata_dict
    assert tasks["body/body-2"].current_attempt == 0  # a new run: attempts start again
    assert _snapshot(f"DeployFlow/{origin}") == before  # the origin run was not written to
    from metaflow import Run

    assert Run(child, _namespace_check=False).successful
    assert _materialized_run(workspace) == child  # so does a re-execution
    if chunks:
        assert "chunk_body[tasks_2_to_2]" in workspace.step_keys(child_id, "STEP_SUCCESS")
    with _instance(workspace) as instance:
        child_run = instance.get_run_by_id(child_id)
    assert parent.tags["dagster-metaflow/error"] and child_run.tags["dagster-metaflow/error"] == ""
    status = workspace.metaflow("dagster", "status", "--run-id", metaflow_run_id(child_id))
    assert "SUCCEEDED" in status.stdout and "Error:" not in status.stdout + status.stderr
    # the parent's failure and the child's success, each announced once
    assert [b["payload"]["source"] for _p, _h, b in good.received] == [f"DeployFlow/{origin}", child]
    assert good.paths() == ["/pagerduty/v2/enqueue", "/pagerduty/v2/change/enqueue"]


@pytest.mark.flow("deploy_flow.py")
def test_deployer_api(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from metaflow import Deployer
    from metaflow.runner.deployer import DeployedFlow

    env = {"DAGSTER_HOME": str(workspace.dagster_home)}
    deployer = Deployer(str(workspace.flow), env=env, cwd=str(workspace.dir), show_output=False)
    # only_json: what would be deployed, with create's options (as Argo's .workflow_template)
    shown = deployer.dagster().create(
        only_json=True, workflow_title="Nightly run", notify_on_error=True, notify_slack_webhook_url="env:HOOK"
    ).definitions
    assert shown is not None and shown["job_name"] == "DeployFlow" and shown["file"] == "deployflow_dagster.py"
    assert "Nightly run" in shown["definitions"] and "def DeployFlow_notify_on_error(" in shown["definitions"]
    assert not (workspace.dir / "deployflow_dagster.py").exists()
    assert workspace.metaflow("dagster", "describe", check=False).returncode != 0  # nothing recorded
    flow = deployer.dagster().create(tags=["api"])
    assert flow.definitions is None
    assert flow.name == "DeployFlow" and flow.id == f"DeployFlow@{workspace.dagster_home}"
    t0 = time.monotonic()
    triggered = flow.trigger(alpha=2.5, retry_count=7, payload={"x": 1}, flag=True)
    assert time.monotonic() - t0 < 30
    assert triggered.status in ("PENDING", "RUNNING", "SUCCEEDED")
    assert triggered.dagster_ui is None  # no UI URL configured: no guessed URL
    monkeypatch.setenv("DAGSTER_METAFLOW_UI_URL", "http://dagster.example:8080/")
    assert triggered.dagster_ui and triggered.dagster_ui.startswith("http://dagster.example:8080/runs/")
    run = triggered.wait_for_run(check_interval=1, timeout=120)
    assert run is not None
    triggered.wait_for_completion(check_interval=1, timeout=180)
    assert triggered.status == "SUCCEEDED" and not triggered.is_running and triggered.error is None
    assert triggered.run.successful
    assert triggered.run["start"].task.data.seen == {"alpha": 2.5, "retry_count": 7, "payload": {"x": 1}, "flag": True}

    # a fresh process finds the deployment by name and by id, and triggers it
    for ident in ("DeployFlow", flow.id):
        code = (
            "from metaflow.runner.deployer import DeployedFlow\n"
            f"f = DeployedFlow.from_deployment({ident!r}, impl='dagster')\n"
            "t = f.trigger(alpha=1.5)\n"
            "t.wait_for_completion(check_interval=1, timeout=180)\n"
            "print('RESULT', t.status, t.run.successful, t.run['start'].task.data.seen['alpha'])\n"
        )
        env_ident = dict(os.environ, **(env if ident == "DeployFlow" else {}))
        if ident != "DeployFlow":
            env_ident.pop("DAGSTER_HOME", None)
        res = subprocess.run([sys.executable, "-c", code], cwd=workspace.dir, env=env_ident, capture_output=True, text=True, timeout=300)
        assert "RESULT SUCCEEDED True 1.5" in res.stdout, res.stderr[-3000:]

    os.environ["DAGSTER_HOME"] = str(workspace.dagster_home)
    try:
        names = [f.name for f in DeployedFlow.list_deployed_flows(impl="dagster")]
        assert names == ["DeployFlow"]
        again = DeployedFlow.get_triggered_run("DeployFlow", run.id, impl="dagster")
        assert again.status == "SUCCEEDED" and again.run.id == run.id
    finally:
        del os.environ["DAGSTER_HOME"]

    # a failing run reports FAILED promptly; resume through the Deployer fixes it
    (workspace.dir / "fail-1").write_text("")
    failing = flow.trigger(marker_dir=str(workspace.dir))
    deadline = time.monotonic() + 120
    while failing.status != "FAILED":
        assert time.monotonic() < deadline, failing.status
        time.sleep(1)
    assert not failing.run.successful and "body" in [s.id for s in failing.run.steps()]
    (workspace.dir / "fail-1").unlink()
    resumed = flow.resume(origin_run_id=failing.run.id)
    resumed.wait_for_completion(check_interval=1, timeout=180)
    assert resumed.status == "SUCCEEDED" and resumed.run["join"].task.data.results == [2, 4, 6]
    assert resumed.run["start"].task.metadata_dict.get("origin-run-id") == failing.run.id
    assert flow.delete()
    os.environ["DAGSTER_HOME"] = str(workspace.dagster_home)
    try:
        assert list(DeployedFlow.list_deployed_flows(impl="dagster")) == []
    finally:
        del os.environ["DAGSTER_HOME"]


@pytest.mark.flow("linear_flow.py")
def test_production_token_guards_redeploy_and_root_user_runs(workspace: Workspace) -> None:
    res = workspace.metaflow("dagster", "create", "out_dagster.py", METAFLOW_HOME=str(workspace.dir / "alice"))
    token = res.stderr.split("production:")[1].split()[0]
    assert f'production_token="{token}"' in (workspace.dir / "out_dagster.py").read_text()
    # another user, with their own Metaflow home (so not holding the token)
    other = {"METAFLOW_USER": "mallory", "METAFLOW_HOME": str(workspace.dir / "mallory")}
    res = workspace.metaflow("dagster", "create", "out_dagster.py", check=False, **other)
    assert res.returncode != 0 and "production token" in res.stderr and "--authorize" in res.stderr
    assert "Traceback" not in res.stderr
    workspace.metaflow("dagster", "create", "out_dagster.py", "--authorize", token, **other)
    # a run worker started as root (a systemd service) works: steps run as the deployer
    out = workspace.dir / "out_dagster.py"
    workspace.run(str(BIN / "dagster"), "job", "execute", "-f", str(out), "-j", "LinearFlow",
                  USER="root", METAFLOW_USER="", SUDO_USER="", USERNAME="")
    from metaflow import Run

    run = Run(f"LinearFlow/{metaflow_run_id(workspace.last_dagster_run().run_id)}", _namespace_check=False)
    assert run.successful and "user:mallory" in run.tags


@pytest.mark.flow("linear_flow.py")
def test_queued_instance_runs_through_a_real_daemon(workspace: Workspace) -> None:
    """Queued runs, one at a time: the one of the deployment with `--workflow-priority 10`,
    queued second, starts first (Dagster's dagster/priority)."""
    (workspace.dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n"
        "  module: dagster.core.run_coordinator\n  class: QueuedRunCoordinator\n"
        "  config:\n    max_concurrent_runs: 1\n    dequeue_interval_seconds: 1\n"
    )
    workspace.compile()
    workspace.metaflow("dagster", "--name", "Urgent", "create", "urgent_dagster.py", "--workflow-priority", "10")
    res = workspace.metaflow("dagster", "trigger", "--run-id-file", "rid")
    assert "queued: dagster-daemon" in res.stderr
    workspace.metaflow("dagster", "--name", "Urgent", "trigger", "--run-id-file", "urgent")
    mf_run_id = (workspace.dir / "rid").read_text()
    drun = _dagster_run_of(workspace, mf_run_id)
    urgent = _dagster_run_of(workspace, (workspace.dir / "urgent").read_text())
    assert drun.status.value == "QUEUED" and urgent.tags["dagster/priority"] == "10"
    env = dict(os.environ, DAGSTER_HOME=str(workspace.dagster_home))
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace.dagster_home / "dagster_metaflow_workspace.yaml")],
        cwd=workspace.dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        assert _wait_finished(workspace, drun.run_id, timeout=240).status.value == "SUCCESS"
        assert _wait_finished(workspace, urgent.run_id, timeout=60).status.value == "SUCCESS"
    finally:
        os.killpg(daemon.pid, 15)
        daemon.wait(timeout=60)
    from dagster import DagsterInstance
    from metaflow import Run

    assert Run(f"LinearFlow/{mf_run_id}", _namespace_check=False).successful
    with DagsterInstance.from_config(str(workspace.dagster_home)) as instance:
        first, second = (instance.get_run_record_by_id(r.run_id) for r in (urgent, drun))
        assert first.start_time < second.start_time, "the higher priority run started first"


@pytest.mark.flow("identity_flow.py")
def test_identity_user_runs_as_the_deployer_like_flow_run(workspace: Workspace) -> None:
    """`create --identity user`: the steps see what `flow.py run` shows them (namespace
    user:<deployer>, exactly the --tag tags); the default is the production identity."""
    from metaflow import Run

    user = os.environ["METAFLOW_USER"]
    seen = {}
    for identity in ("user", "production"):
        workspace.metaflow("dagster", "create", "out_dagster.py", "--identity", identity, "--tag", "t 1")
        workspace.metaflow("dagster", "trigger", "--wait", "--run-id-file", identity)
        mf_run_id = (workspace.dir / identity).read_text().strip()
        seen[identity] = Run(f"IdentityFlow/{mf_run_id}", _namespace_check=False)
    data = seen["user"]["start"].task.data
    assert (data.namespace, data.client_namespace, data.username) == (f"user:{user}",) * 2 + (user,)
    assert data.tags == ["t 1"] and seen["user"].tags == frozenset({"t 1"}) | seen["user"].system_tags
    assert f"user:{user}" in seen["user"].system_tags
    assert not any(t.startswith("production:") for t in seen["user"].system_tags)
    prod = seen["production"]["start"].task.data
    assert prod.namespace.startswith("production:") and prod.username == user
    assert prod.tags == ["t 1", f"user:{user}"]
