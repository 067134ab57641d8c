"""The dg component's compiled definitions: a cache under the project, and the compile on a miss.

`build_defs` runs in every code server load and every run worker, so a hit must only import
a file. A FlowSource needs Metaflow's loaded CLI state (configs, @project branch, decorators),
which exists only inside `python flow.py ...`: a miss runs ONE subprocess,
`python <flow> --quiet [top-level options] dagster compile-component --request JSON`, i.e.
`create`'s own code path (`deploy.deploy`), which also records the deployment.

Layout (nothing else is written into the user's tree):

    <project root>/.dagster_metaflow/.gitignore               "*"
    <project root>/.dagster_metaflow/<defs path>[/<n>]/<flow>_dagster.py   the generated file
                                                      /cache_key           its key
                                                      /.lock               compile lock

The key is a sha256 over this package's own files, the attributes, the instance
(DAGSTER_HOME, where the record goes), the Metaflow settings a compile bakes in, and the
bytes of the files beside the flow (what Metaflow packages, plus config-like files), so
editing the flow or a helper module recompiles and nothing else does.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_DIR = ".dagster_metaflow"
KEY_FILE = "cache_key"
COMPILE_TIMEOUT = 600  # seconds; a compile saves the code package, maybe to S3
MAX_HASHED_FILES = 5000  # files beside the flow read into the key
DEFAULT_PACKAGE_SUFFIXES = ".py,.R,.RDS"  # Metaflow's METAFLOW_DEFAULT_PACKAGE_SUFFIXES
# read by flows at compile time (Config files, includes) though Metaflow does not package them
CONFIG_SUFFIXES = (".json", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".txt")
# the Metaflow settings a compile bakes into the file: compiler.BAKE_PREFIXES (not imported:
# the compiler imports Metaflow, and a hit must stay cheap; a unit test keeps them equal)
BAKE_PREFIXES = (
    "METAFLOW_DEFAULT_",
    "METAFLOW_DATASTORE_",
    "METAFLOW_DATATOOLS_",
    "METAFLOW_SERVICE_URL",
    "METAFLOW_CARD_",
    "METAFLOW_PROFILE",
)


class ComponentCompileError(Exception):
    """The flow of a component could not be compiled: one line naming defs.yaml and the flow."""


@dataclass(frozen=True)
class CacheEntry:
    """Where one component's compiled definitions live."""

    root: Path  # <project root>/.dagster_metaflow
    folder: Path
    flow_file: Path

    @property
    def definitions_file(self) -> Path:
        return self.folder / f"{self.flow_file.stem}_dagster.py"

    @property
    def key_file(self) -> Path:
        return self.folder / KEY_FILE


def cache_entry(project_root: Path, relative: str, flow_file: Path) -> CacheEntry:
    """The entry of the component at `relative` (its folder below the defs root, with its
    index in defs.yaml when there are several)."""
    root = Path(project_root) / CACHE_DIR
    return CacheEntry(root, root / (relative.strip("/") or "_root"), flow_file)


@functools.lru_cache(maxsize=1)
def tool_fingerprint() -> str:
    """This package's own code and templates: a new dagster-metaflow recompiles."""
    from . import __version__

    digest = hashlib.sha256(__version__.encode())
    root = Path(__file__).parent
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".j2") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def flow_files(flow_file: Path) -> Iterator[Path]:
    """Files beside the flow whose bytes go into the key: what Metaflow packages from the
    flow's directory (its package suffixes), plus config-like files a flow may read."""
    suffixes = os.environ.get("METAFLOW_DEFAULT_PACKAGE_SUFFIXES", DEFAULT_PACKAGE_SUFFIXES)
    wanted = {s.strip() for s in suffixes.split(",") if s.strip()} | set(CONFIG_SUFFIXES)
    count = 0
    for folder, dirs, files in os.walk(flow_file.parent, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if Path(name).suffix in wanted and not name.startswith("."):
                count += 1
                if count > MAX_HASHED_FILES:
                    return
                yield Path(folder) / name


def _metaflow_config_files() -> list[Path]:
    """Metaflow's configuration files (profiles), read by a compile like its environment."""
    home = Path(os.environ.get("METAFLOW_HOME") or "~/.metaflowconfig").expanduser()
    profile = os.environ.get("METAFLOW_PROFILE")
    return [home / "config.json"] + ([home / f"config_{profile}.json"] if profile else [])


def cache_key(attributes: Mapping[str, Any], flow_file: Path) -> str:
    """The key of a compile: tool, attributes, instance, settings and the flow's files."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    add("tool", tool_fingerprint().encode())
    add("python", sys.executable.encode())
    add("attributes", json.dumps(attributes, sort_keys=True, default=str).encode())
    add("instance", os.environ.get("DAGSTER_HOME", "").encode())
    settings = {k: v for k, v in os.environ.items() if k.startswith(BAKE_PREFIXES)}
    settings["METAFLOW_HOME"] = os.environ.get("METAFLOW_HOME", "")
    add("settings", json.dumps(settings, sort_keys=True).encode())
    for path in _metaflow_config_files():
        if path.is_file():
            add(f"config {path}", path.read_bytes())
    add("flow", str(flow_file).encode())
    for path in flow_files(flow_file):
        try:
            add(f"file {path.relative_to(flow_file.parent)}", path.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()


def cached(entry: CacheEntry, key: str) -> bool:
    """Whether the entry holds the compile of this key."""
    try:
        return entry.key_file.read_text().strip() == key and entry.definitions_file.is_file()
    except OSError:
        return False


def compile_command(
    entry: CacheEntry, top_level: Sequence[str], request: Mapping[str, Any]
) -> list[str]:
    """The one subprocess of a miss: `create`'s code path through `compile-component`."""
    spec = {**request, "out_file": str(entry.definitions_file)}
    return [
        sys.executable,
        str(entry.flow_file),
        "--quiet",
        *top_level,
        "dagster",
        "compile-component",
        "--request",
        json.dumps(spec, sort_keys=True),
    ]


def compile_into(entry: CacheEntry, argv: Sequence[str], where: str) -> None:
    """Run the compile; raise ComponentCompileError with its last error line."""
    try:
        proc = subprocess.run(
            list(argv),
            cwd=entry.flow_file.parent,
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise ComponentCompileError(
            f"{where}: the compile did not finish within {COMPILE_TIMEOUT} s"
        ) from None
    if proc.returncode != 0 or not entry.definitions_file.is_file():
        raise ComponentCompileError(f"{where}: {last_error_line(proc.stderr, proc.stdout)}")


def last_error_line(stderr: str, stdout: str = "") -> str:
    """The line of a failed compile that says why (Metaflow prints a headline, then it)."""
    lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
    if not lines:
        return "the compile failed without a message"
    return lines[-1]


def load_definitions(
    entry: CacheEntry, key: str, top_level: Sequence[str], request: Mapping[str, Any], where: str
) -> Any:
    """The component's Definitions: the cached file's `defs`, compiled first on a miss (one
    process compiles at a time; the others then find the entry filled). A hit writes
    nothing, so a cache filled at build time (`dg check defs`) serves a read-only image."""
    if not cached(entry, key):
        try:
            entry.folder.mkdir(parents=True, exist_ok=True)
            _write_gitignore(entry.root)
            lock = open(entry.folder / ".lock", "w")
        except OSError as exc:
            raise ComponentCompileError(
                f"{where}: cannot write the compiled definitions to {entry.folder}: {exc.strerror}"
            ) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not cached(entry, key):
                entry.key_file.unlink(missing_ok=True)
                compile_into(entry, compile_command(entry, top_level, request), where)
                entry.key_file.write_text(key + "\n")
    return import_definitions(entry.definitions_file, key, where)


def _write_gitignore(cache_root: Path) -> None:
    """Keep the cache out of version control, from inside the cache folder only."""
    path = cache_root / ".gitignore"
    if not path.exists():
        path.write_text("# dagster-metaflow's compiled definitions (dg component cache)\n*\n")


def import_definitions(path: Path, key: str, where: str) -> Any:
    """Import a generated file under a name unique to its key and return its `defs`."""
    import dagster as dg

    name = f"dagster_metaflow_component_{key[:16]}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ComponentCompileError(f"{where}: cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Dagster resolves annotations through the module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    defs = getattr(module, "defs", None)
    if not isinstance(defs, dg.Definitions):
        raise ComponentCompileError(f"{where}: {path} defines no Definitions named defs")
    return defs


__all__ = [
    "CACHE_DIR",
    "CacheEntry",
    "ComponentCompileError",
    "cache_entry",
    "cache_key",
    "load_definitions",
]
