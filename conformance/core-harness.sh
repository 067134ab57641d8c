#!/bin/bash
# Metaflow's core harness through Dagster, as ../shared/conformance/core-harness.sh runs it,
# with this project's changes to the harness's scheduler executor (applied to the copy of
# test/core under OUTDIR, never to the Metaflow checkout):
#   1. trigger with `dagster trigger --wait --run-id-file run-id`: the command ends with the
#      run and exits non-zero when it failed. The stock executor instead polls
#      Flow(name)[run_id].finished from its long-lived worker process, whose Metaflow client
#      caches the first test's local datastore root (so later tests are never seen to
#      finish), and which a failed run never reaches (every failing test waits 900 s).
#   2. resume tests are not skipped: after the first run fails, the harness runs
#      `dagster resume --origin-run-id <run> [--step-to-rerun S] --wait --run-id-file run-id`
#      and checks the resumed run, as it does for `flow.py resume`.
#   3. `dagster create --identity user`: the context is python3-all-local's, whose tests check a
#      user's run (namespace user:tester, exactly the --tag tags); a deployment's default
#      identity is its production token, as under Argo Workflows.
# usage: conformance/core-harness.sh METAFLOW_SRC OUTDIR [run_tests.py args]
set -u
here=$(cd "$(dirname "$0")" && pwd)
shared=${SHARED:-$here/../../shared/conformance/core-harness.sh}
[ -f "$shared" ] || { echo "missing $shared (set SHARED=path to shared/conformance/core-harness.sh)"; exit 2; }
src=$(cd "$1" && pwd) out=$(mkdir -p "$2" && cd "$2" && pwd); shift 2
# the shared script copies test/core to OUTDIR/core and runs it with \$VENV/bin/python first
# on PATH: hand it a "virtualenv" whose python patches run_tests.py, then is the real one
venv=$(cd "${VENV:-${VIRTUAL_ENV:-.venv}}" && pwd)
# 4. the card-extension test packages all install into metaflow_extensions/: one pip call per
#    package with --target keeps only the last one (CardExtensionsImportTest then fails natively
#    too), so install them together before the shared script looks for $out/ext
if [ ! -d "$out/ext" ] && [ -d "$src/test/extensions/packages" ]; then
  "$venv/bin/python" -m pip install -q --no-deps --target "$out/ext" "$src"/test/extensions/packages/*/ >/dev/null 2>&1
fi
shimvenv=$out/shimvenv
shim=$shimvenv/bin
rm -rf "$shimvenv" && mkdir -p "$shim"
cat >"$shim/python" <<SH
#!/bin/bash
if [ "\${1:-}" = run_tests.py ] && [ ! -f .dagster_metaflow_patched ]; then
  "$venv/bin/python" "$here/patch_run_tests.py" run_tests.py || exit 2
  touch .dagster_metaflow_patched
fi
exec "$venv/bin/python" "\$@"
SH
chmod +x "$shim/python"
printf '#!/bin/bash\nexec "%s" "$@"\n' "$venv/bin/python" >"$shim/python3" && chmod +x "$shim/python3"
VENV=$shimvenv bash "$shared" "$src" "$out" "$@"
