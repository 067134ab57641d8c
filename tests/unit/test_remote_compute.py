"""Remote compute (@kubernetes, @batch) and @conda/@pypi steps, without a cluster.

A remote task runs the flow's code package on a machine where dagster-metaflow is not
installed; the command a Dagster op launches for it must be the one Metaflow's own runtime
launches for the same task.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

FLOWS = Path(__file__).parent.parent / "flows"


def test_code_package_loads_without_dagster_metaflow_installed(tmp_path: Path) -> None:
    """Metaflow copies this project's extension into every code package: where only the
    package is (a pod, a conda environment), importing Metaflow must still work and the
    `dagster_internal` decorator every task carries must resolve."""
    script = tmp_path / "make_package.py"
    script.write_text(
        "import sys\n"
        "from metaflow import FlowSpec, step\n"
        "class P(FlowSpec):\n"
        "    @step\n"
        "    def start(self):\n"
        "        self.next(self.end)\n"
        "    @step\n"
        "    def end(self):\n"
        "        pass\n"
        "from metaflow.metaflow_environment import MetaflowEnvironment\n"
        "from metaflow.package import MetaflowPackage\n"
        "flow = P(use_cli=False)\n"
        "pkg = MetaflowPackage(flow, MetaflowEnvironment(flow), lambda *a, **k: None)\n"
        "sys.stdout.buffer.write(bytes(pkg.blob))\n"
    )
    blob = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, check=True).stdout
    root = tmp_path / "pod"
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(root, filter="data")
    probe = (
        "import importlib.util, metaflow.plugins as p\n"
        "assert importlib.util.find_spec('dagster_metaflow') is None\n"
        "assert p.__file__.startswith('.mf_code') or '/pod/.mf_code/' in p.__file__, p.__file__\n"
        "print(sorted(d.name for d in p.STEP_DECORATORS if d.name.startswith('dagster')))\n"
        "print(sorted(p.DEPLOYER_IMPL_PROVIDERS and [d.TYPE for d in p.DEPLOYER_IMPL_PROVIDERS]))\n"
    )
    # -S: site-packages only as a plain path (its .pth files, hence the editable install of
    # dagster_metaflow, are not processed); the package's own Metaflow comes first
    import sysconfig

    path = f"{root / '.mf_code'}:{sysconfig.get_paths()['purelib']}"
    proc = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        cwd=root,
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "USER": "tester"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "['dagster_internal']"
    assert "dagster" not in proc.stdout.split("\n")[1]
