"""Patch a copy of Metaflow's test/core/run_tests.py for dagster-metaflow (see core-harness.sh)."""

from __future__ import annotations

import re
import sys

path = sys.argv[1]
src = open(path, encoding="utf-8").read()


def sub(pattern: str, repl: str, flags: int = re.S) -> None:
    global src
    new, n = re.subn(pattern, repl, src, count=1, flags=flags)
    if n != 1:
        sys.exit(f"run_tests.py changed: cannot apply {pattern[:60]!r}; update conformance/patch_run_tests.py")
    src = new


# 1. resume tests run
sub(r"( *)# Schedulers \(Argo, SFN\) don't support resume — skip those test cases\n\s*if formatter\.should_resume:",
    r"\1if False:  # dagster-metaflow: resume tests run through `dagster resume`")
# 2. trigger blocks until the run ends; no polling
sub(r'trigger_cmd\.extend\(\[scheduler, "trigger", "--run-id-file", "run-id"\]\)',
    'trigger_cmd.extend([scheduler, "trigger", "--wait", "--run-id-file", "run-id"])')
sub(r'(\n *)if called_processes\[-1\]\.returncode:\n *if formatter\.should_fail:\n *log\("Flow failed as expected\."\)\n *else:\n *log\(\n *"scheduler trigger failed",',
    r'\1if called_processes[-1].returncode and not formatter.should_resume:\1    if formatter.should_fail:\1        log("Flow failed as expected.")\1    else:\1        log(\1            "scheduler trigger failed",')
sub(r" *# Step 3: poll the metadata service until the run finishes.*?subprocess\.CompletedProcess\(\n *trigger_cmd, 0 if run_succeeded else 1, b\"\", b\"\"\n *\)\n *\)\n",
    "")
# 3. resume through the scheduler
sub(r"(\n *)elif executor == \"api\":\n( *)_, resume_level_dict = construct_arg_dicts_from_click_api\(\)",
    r'\1elif executor == "scheduler":'
    r'\1    resume_cmd = [context["python"], "-B", "test_flow.py"] + context["top_options"]'
    r'\1    resume_cmd += [scheduler, "resume", "--origin-run-id", open("run-id").read().strip(), "--wait", "--run-id-file", "run-id"]'
    r'\1    if formatter.resume_step:'
    r'\1        resume_cmd += ["--step-to-rerun", formatter.resume_step]'
    r'\1    called_processes.append(subprocess.run(resume_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False))'
    r'\1elif executor == "api":\n\2_, resume_level_dict = construct_arg_dicts_from_click_api()')
# 4. the context is python3-all-local's, whose tests check a user's run (namespace
#    user:tester, exactly the --tag tags: CurrentSingletonTest, BasicTagTest): deploy with
#    the deploying user's identity instead of the default production token
sub(r'create_cmd\.extend\(\[scheduler, "create"\]',
    'create_cmd.extend([scheduler, "create", "--identity", "user"]')
open(path, "w", encoding="utf-8").write(src)
