"""Install this project with its test extras, and dagster-dg-cli and create-dagster at
dagster's own version (tests/e2e/test_dg.py), into the virtualenv whose Python runs this:
`make` calls `.venv/bin/python scripts/install_env.py`.

With uv when it can be had: ~27 s on a fresh clone with an empty uv cache, against pip's
~68 s, the same versions (`pip freeze` of both compared). uv reads none of pip's settings,
so pip's own reading of them (its environment variables and configuration files, through
the parser of `pip install`) is handed to uv: index, extra indexes, find-links,
constraints, no-index, trusted hosts, certificate bundle, and pip's choice across indexes
(the best version from any of them). uv compiles the bytecode, as pip does: on a machine
that sets PYTHONDONTWRITEBYTECODE every process of the suite would otherwise compile
Dagster again. uv lives in <venv>/uv-tool, off the venv's PATH: the dg tests put that bin
on PATH, and create-dagster asks whether to `uv sync` whenever it sees a uv.

With pip when USE_UV=0, when uv cannot be installed, when pip's settings cannot be read or
include one not handed to uv (e.g. pre-releases, binary-only, a proxy, required hashes), or
when a uv call fails. uv's own configuration files are not read (`--no-config`); `UV_*`
variables are, as the user's own choice for uv.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

PYTHON = sys.executable
UV = Path(sys.prefix) / "uv-tool" / "bin" / "uv"
UV_REQUIREMENT = "uv>=0.13,<0.14"  # the uv whose options this script was checked against
UvCommand = tuple[list[str], dict[str, str]]
# pip's settings handed to uv, and those that change nothing uv installs
HANDED = {"index_url", "extra_index_urls", "find_links", "constraints", "trusted_hosts", "no_index", "cert"}
HARMLESS = {"timeout", "retries", "disable_pip_version_check", "no_input", "cache_dir", "quiet", "verbose", "progress_bar", "no_color", "log"}


def main() -> int:
    uv = _uv_command()
    if not _install(uv, "-e", ".[test]"):
        return 1
    from importlib.metadata import version as installed

    version = installed("dagster")
    return 0 if _install(uv, f"dagster-dg-cli=={version}", f"create-dagster=={version}") else 1


def _uv_command() -> UvCommand | None:
    """uv's `pip install` command line and environment; None: install with pip."""
    if not _switches().switch("USE_UV", True):
        return None
    target = str(UV.parent.parent)
    if not UV.exists() and not _pip(
        "install", "-q", "--only-binary", ":all:", "--target", target, UV_REQUIREMENT
    ):
        print("uv could not be installed: installing with pip", flush=True)
        return None
    settings = _pip_settings_for_uv()
    if isinstance(settings, str):
        print(f"{settings}: installing with pip", flush=True)
        return None
    args, env = settings
    print("installing with uv pip install " + _redacted(" ".join(args)), flush=True)
    return [str(UV), "pip", "install", "-q", "--python", PYTHON, *args], env


def _switches() -> Any:
    """The runtime's reading of on/off variables (`dagster_metaflow/runtime/switches.py`,
    standard library only), loaded from its file: the package is not installed yet."""
    path = Path(__file__).resolve().parent.parent / "dagster_metaflow" / "runtime" / "switches.py"
    spec = importlib.util.spec_from_file_location("_dagster_metaflow_switches", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pip_settings_for_uv() -> UvCommand | str:
    """pip's effective settings as uv's options and environment, or why they cannot be."""
    try:
        from pip._internal.commands import create_command

        command = create_command("install")
        options, _ = command.parse_args([])  # pip's environment variables and files
        defaults = command.parser.defaults
    except (Exception, SystemExit) as exc:  # a bad setting: pip's parser exits
        return f"pip's settings could not be read ({type(exc).__name__})"
    changed = sorted(
        name
        for name, value in vars(options).items()
        if name not in HANDED | HARMLESS and value != defaults.get(name)
    )
    if changed:
        return f"pip is set up with {', '.join(changed)}, which uv would not follow"
    # --no-config: uv's own files (uv.toml, [tool.uv]) would add what pip does not have
    args = ["--no-config", "--compile-bytecode", "--index-url", options.index_url]
    args += [a for url in options.extra_index_urls for a in ("--extra-index-url", url)]
    args += [a for link in options.find_links for a in ("--find-links", link)]
    args += [a for file in options.constraints for a in ("--constraints", file)]
    args += [a for host in options.trusted_hosts for a in ("--allow-insecure-host", host)]
    if options.no_index:
        args.append("--no-index")
    if options.extra_index_urls or options.find_links:
        args += ["--index-strategy", "unsafe-best-match"]  # pip's way: the best of all indexes
    env = dict(os.environ)
    if options.cert:  # pip's own bundle wins over SSL_CERT_FILE for pip: for uv too
        env["SSL_CERT_FILE"] = options.cert
    return args, env


def _install(uv: UvCommand | None, *requirements: str) -> bool:
    if uv is not None:
        command, env = uv
        if subprocess.run([*command, *requirements], env=env).returncode == 0:
            return True
        print(f"uv could not install {' '.join(requirements)}: installing with pip", flush=True)
    return _pip("install", "-q", *requirements)


def _pip(*args: str) -> bool:
    return subprocess.run([PYTHON, "-m", "pip", *args]).returncode == 0


def _redacted(text: str) -> str:
    """Credentials in index URLs hidden, as pip hides them."""
    return re.sub(r"//[^/@\s]+@", "//****@", text)


if __name__ == "__main__":
    sys.exit(main())
