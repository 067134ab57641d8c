"""The code package a deployment runs: fetched from the flow's datastore and extracted once
per host, into `<tmp>/dagster_metaflow_code/<sha>` (content-addressed, so concurrent steps
and runs share it and a new `create` gets a new directory).

Steps run the package's copy of the flow file with the installed Metaflow (the same
version that built the package), so later edits of the flow file, or its removal, do not
change a deployment until the next `create`."""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from typing import Any


def file_fingerprint(path: str) -> str:
    """sha256 of a file: how a generated file names the flow file it was compiled from."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def extracted(flow_datastore: Any, package: Mapping[str, str]) -> str:
    """Directory holding the extracted package (fetched and extracted on first use)."""
    sha = package["sha"]
    base = os.path.join(tempfile.gettempdir(), "dagster_metaflow_code")
    os.makedirs(base, exist_ok=True)
    target = os.path.join(base, sha)
    if os.path.isdir(target):
        return target
    with open(os.path.join(base, f"{sha}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.path.isdir(target):
                return target
            blob = _load(flow_datastore, sha)
            tmp = tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=base)
            try:
                with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
                    tar.extractall(tmp, filter="data")
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _load(flow_datastore: Any, sha: str) -> bytes:
    """The package blob, through Metaflow's content-addressed store (any datastore)."""
    for key, blob in flow_datastore.load_data([sha], force_raw=True):
        if key == sha:
            return bytes(blob)
    raise RuntimeError(f"code package {sha} not found in the flow's datastore")
