"""The Deployer API guards a deployment exactly as the CLI does: someone who is not its
deployer cannot redeploy, terminate or delete it without its production token; trigger stays
open (as in Metaflow's Argo integration)."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import Workspace

pytestmark = pytest.mark.e2e

# runs as another user, in a fresh process: one JSON line per attempt
_AS_OTHER_USER = """
import json, sys
from metaflow import Deployer
from metaflow.exception import MetaflowException
from metaflow.runner.deployer import DeployedFlow

flow_file, token = sys.argv[1], sys.argv[2]

def attempt(what, fn):
    try:
        out = {"what": what, "ok": fn()}
    except MetaflowException as exc:
        out = {"what": what, "refused": type(exc).__name__, "message": exc.message}
    print("ATTEMPT " + json.dumps(out), flush=True)

attempt("create", lambda: Deployer(flow_file).dagster().create() and True)
deployed = DeployedFlow.from_deployment("SleepyFlow", impl="dagster")
run = deployed.trigger()  # open to anyone
rerun = DeployedFlow.get_triggered_run("SleepyFlow", run.pathspec.split("/")[1], impl="dagster")
attempt("terminate", lambda: rerun.terminate())
attempt("delete", lambda: deployed.delete())
attempt("terminate-authorized", lambda: rerun.terminate(authorize=token))
print("STATUS " + str(run.status), flush=True)
attempt("delete-authorized", lambda: deployed.delete(authorize="production:" + token))
"""


@pytest.mark.flow("sleepy_flow.py")
def test_deployer_refuses_another_user_without_the_token_as_the_cli(workspace: Workspace) -> None:
    workspace.flow.write_text(workspace.flow.read_text().replace("@timeout(seconds=4)", ""))
    res = workspace.metaflow("dagster", "create", "out_dagster.py", METAFLOW_HOME=str(workspace.dir / "alice"))
    token = res.stderr.split("production:")[1].split()[0]
    mallory = {"METAFLOW_USER": "mallory", "METAFLOW_HOME": str(workspace.dir / "mallory")}
    cli = workspace.metaflow("dagster", "delete", check=False, **mallory)
    cli_line = next(ln.strip() for ln in cli.stderr.splitlines() if "you need its production token" in ln)

    proc = workspace.run(sys.executable, "-c", _AS_OTHER_USER, str(workspace.flow), token, timeout=400, **mallory)
    attempts = {
        a["what"]: a for a in (json.loads(ln[len("ATTEMPT ") :]) for ln in proc.stdout.splitlines() if ln.startswith("ATTEMPT "))
    }
    for action in ("create", "terminate", "delete"):
        a = attempts[action]
        assert a.get("refused") == "IncorrectProductionToken", a
        assert a["message"] == cli_line.replace("to delete it", f"to {action} it").replace(
            "dagster delete", f"dagster {action}"
        ).replace("`delete(", f"`{action}("), a
    assert attempts["terminate-authorized"]["ok"] is True, attempts
    assert "STATUS ABORTED" in proc.stdout
    assert attempts["delete-authorized"]["ok"] is True, attempts
    assert "no deployment named 'SleepyFlow'" in workspace.metaflow("dagster", "describe", check=False).stderr
