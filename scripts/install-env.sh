#!/bin/sh
# Install this project with its test extras, and dagster-dg-cli and create-dagster at
# dagster's own version (tests/e2e/test_dg.py), into the virtualenv $1. Called by `make`.
#
# With uv when it can be had: ~27 s on a fresh clone with an empty uv cache, against pip's
# ~68 s, the same versions (`pip freeze` of both compared). uv reads none of pip's settings,
# so pip's index, extra indexes, find-links and constraints (its environment variables, else
# pip.conf) are handed to it, with pip's way of choosing across indexes (the best version
# from any of them). uv compiles the bytecode, as pip does: on a machine that sets
# PYTHONDONTWRITEBYTECODE every process of the suite would otherwise compile Dagster again.
# uv lives in $1/uv-tool, off the venv's PATH: the dg tests put that bin on PATH, and
# create-dagster asks whether to `uv sync` whenever it sees a uv.
# With pip when USE_UV=0, when uv cannot be installed, or when it fails.
set -eu
venv=$1
py=$venv/bin/python
uv=$venv/uv-tool/bin/uv

pip_config=$("$py" -m pip config list 2>/dev/null || true)
setting() {  # pip's value for a setting: its environment variable, else its configuration's
  value=$(printenv "$1" || true)
  [ -n "$value" ] ||
    value=$(printf '%s\n' "$pip_config" | sed -nE "s/^(global|install)\.$2='(.*)'\$/\2/p" | tail -n 1)
  printf '%s' "$value"
}

use_uv=${USE_UV:-1}
uv_args="--compile-bytecode"
if [ "$use_uv" != 0 ]; then
  [ -x "$uv" ] || "$py" -m pip install -q --only-binary :all: --target "$venv/uv-tool" uv ||
    echo "uv could not be installed: installing with pip"
  extra_indexes=$(setting PIP_EXTRA_INDEX_URL extra-index-url)
  find_links=$(setting PIP_FIND_LINKS find-links)
  for url in $(setting PIP_INDEX_URL index-url); do uv_args="$uv_args --index-url $url"; done
  for url in $extra_indexes; do uv_args="$uv_args --extra-index-url $url"; done
  for dir in $find_links; do uv_args="$uv_args --find-links $dir"; done
  for file in $(setting PIP_CONSTRAINT constraint); do uv_args="$uv_args --constraint $file"; done
  [ -z "$extra_indexes$find_links" ] || uv_args="$uv_args --index-strategy unsafe-best-match"
  [ ! -x "$uv" ] || echo "installing with uv pip install $uv_args"
fi

install() {
  if [ "$use_uv" != 0 ] && [ -x "$uv" ]; then
    # shellcheck disable=SC2086  # uv_args: options split on purpose
    "$uv" pip install -q --python "$py" $uv_args "$@" && return 0
    echo "uv could not install $*: installing with pip"
  fi
  "$py" -m pip install -q "$@"
}

install -e '.[test]'
dagster_version=$("$py" -c 'import dagster; print(dagster.__version__)')
install "dagster-dg-cli==$dagster_version" "create-dagster==$dagster_version"
