"""The code package a deployment runs: fetched from the flow's datastore and extracted once
per host and user, into `<tmp>/dagster_metaflow_code-<uid>/<sha>` (content-addressed, so
concurrent steps and runs share it and a new `create` gets a new directory; one unused for
days is removed, `hostfiles`).

Steps run the package's copy of the flow file with the installed Metaflow (the same
version that built the package), so later edits of the flow file, or its removal, do not
change a deployment until the next `create`."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from typing import Any

from .hostfiles import cached


def file_fingerprint(path: str) -> str:
    """sha256 of a file: how a generated file names the flow file it was compiled from."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def extracted(flow_datastore: Any, package: Mapping[str, str]) -> str:
    """Directory holding the extracted package (fetched and extracted on first use), marked
    used by every step started from it (`hostfiles.cached`)."""
    sha = package["sha"]
    return cached("code", sha, lambda target: _extract(flow_datastore, sha, target))


def _extract(flow_datastore: Any, sha: str, target: str) -> None:
    """Extract the package into `target`, which appears complete or not at all."""
    blob = _load(flow_datastore, sha)
    tmp = tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=os.path.dirname(target))
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(flow_datastore: Any, sha: str) -> bytes:
    """The package blob, through Metaflow's content-addressed store (any datastore)."""
    for key, blob in flow_datastore.load_data([sha], force_raw=True):
        if key == sha:
            return bytes(blob)
    raise RuntimeError(f"code package {sha} not found in the flow's datastore")
