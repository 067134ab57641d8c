#!/bin/bash
# Baseline for the core harness: the same combinations with Metaflow's own runtime
# (context python3-all-local, `python test_flow.py run`/`resume`, cli executor), same set-up as
# ../shared/conformance/core-harness.sh (per-test datastore, card extension packages).
# usage: conformance/core-native.sh METAFLOW_SRC OUTDIR [run_tests.py args]
set -u
src=$(cd "$1" && pwd) out=$(mkdir -p "$2" && cd "$2" && pwd); shift 2
venv=$(cd "${VENV:-${VIRTUAL_ENV:-.venv}}" && pwd)
[ -x "$venv/bin/python" ] || { echo "no python in $venv: set VENV"; exit 2; }
rm -rf "$out/core" && cp -r "$src/test/core" "$out/core"
export PATH=$venv/bin:$PATH
unset METAFLOW_DATASTORE_SYSROOT_LOCAL
export METAFLOW_HOME=$out/mfhome METAFLOW_PROFILE="" USER=${USER:-harness} METAFLOW_USER=tester
mkdir -p "$METAFLOW_HOME"
# the card-extension packages installed together (one --target call per package would keep
# only the last one's metaflow_extensions/, see core-harness.sh)
if [ ! -d "$out/ext" ] && [ -d "$src/test/extensions/packages" ]; then
  "$venv/bin/python" -m pip install -q --no-deps --target "$out/ext" "$src"/test/extensions/packages/*/ >/dev/null 2>&1
fi
[ -d "$out/ext" ] && export PYTHONPATH="$out/ext${PYTHONPATH:+:$PYTHONPATH}"
python - "$out/core/contexts.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
local = next(c for c in doc["contexts"] if c["name"] == "python3-all-local")
doc["contexts"] = [dict(local, executors=["cli"])]
json.dump(doc, open(sys.argv[1], "w"), indent=2)
PY
cd "$out/core" || exit 2
python run_tests.py --contexts python3-all-local --inherit-env "$@" >"$out/harness.log" 2>&1
rc=$?
grep -a "failed \[using\|success \[using" "$out/harness.log" | sed 's/.*### //; s/ ###.*//' | sort | uniq -c | tail -n 60
grep -ac "success \[using" "$out/harness.log" | sed 's/^/passed: /'
grep -ac "failed \[using" "$out/harness.log" | sed 's/^/failed: /'
exit $rc
