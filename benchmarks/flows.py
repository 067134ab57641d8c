"""Flow sources the benchmarks share (small shapes for start-up cost, wide ones for scale),
and the scratch instance they run in."""

from __future__ import annotations

import importlib.util
import os
import textwrap
from pathlib import Path
from types import ModuleType

_LINEAR = '''
from metaflow import FlowSpec, step


class Linear10Flow(FlowSpec):
    @step
    def start(self):
        self.x = 0
        self.next(self.s1)
{middle}
    @step
    def end(self):
        print("x =", self.x)


if __name__ == "__main__":
    Linear10Flow()
'''

_FOREACH = '''
from metaflow import FlowSpec, step


class {name}(FlowSpec):
    @step
    def start(self):
        self.items = list(range({width}))
        self.next(self.body, foreach="items")

    @step
    def body(self):
        self.y = self.input * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.y for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total =", self.total)


if __name__ == "__main__":
    {name}()
'''

_NESTED = '''
import time

from metaflow import FlowSpec, step


class {name}(FlowSpec):
    @step
    def start(self):
        self.outer = list(range({outer}))
        self.next(self.fan, foreach="outer")

    @step
    def fan(self):
        self.o = self.input
        {skew}
        self.inner = list(range({inner}))
        self.next(self.leaf, foreach="inner")

    @step
    def leaf(self):
        {leaf_sleep}
        self.v = self.o * 100 + self.input
        self.next(self.inner_join)

    @step
    def inner_join(self, inputs):
        self.s = sum(i.v for i in inputs)
        self.next(self.outer_join)

    @step
    def outer_join(self, inputs):
        self.total = sum(i.s for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total =", self.total)


if __name__ == "__main__":
    {name}()
'''


def linear(steps: int = 10) -> tuple[str, str]:
    """(class name, source) of a linear flow of `steps` steps (start, s1.., end)."""
    parts = []
    middle = steps - 2
    for i in range(1, middle + 1):
        nxt = f"s{i + 1}" if i < middle else "end"
        parts.append(textwrap.indent(f"@step\ndef s{i}(self):\n    self.x += 1\n    self.next(self.{nxt})\n", "    "))
    return "Linear10Flow", _LINEAR.format(middle="\n".join(parts))


def foreach(width: int) -> tuple[str, str]:
    """(class name, source) of start -> foreach body x width -> join -> end."""
    name = f"Foreach{width}Flow"
    return name, _FOREACH.format(name=name, width=width)


def nested(
    outer: int, inner: int, skew_s: float = 0.0, leaf_s: float = 0.0, fast_slow_item: bool = False
) -> tuple[str, str]:
    """(class name, source) of a 2-level nested foreach; with `skew_s` outer item 0 sleeps
    that long before fanning out (a skewed flow), with `leaf_s` every leaf sleeps, or with
    `fast_slow_item` every leaf but those of outer item 0 (what a collect barrier between
    the levels costs: natively the other items' leaves run while item 0 sleeps)."""
    barrier = fast_slow_item and bool(leaf_s)
    kind = "Barrier" if barrier else "Skewed" if skew_s else ""
    name = f"Nested{outer}x{inner}{kind}Flow"
    skew = f"time.sleep({skew_s} if self.input == 0 else 0)" if skew_s else "pass"
    only = " if self.o != 0 else 0" if barrier else ""
    leaf = f"time.sleep({leaf_s}{only})" if leaf_s else "pass"
    return name, _NESTED.format(name=name, outer=outer, inner=inner, skew=skew, leaf_sleep=leaf)


_NESTED3 = '''
from metaflow import FlowSpec, step


class {name}(FlowSpec):
    @step
    def start(self):
        self.a = list(range({n}))
        self.next(self.l1, foreach="a")

    @step
    def l1(self):
        self.i = self.input
        self.b = list(range({n}))
        self.next(self.l2, foreach="b")

    @step
    def l2(self):
        self.j = self.input
        self.c = list(range({n}))
        self.next(self.leaf, foreach="c")

    @step
    def leaf(self):
        self.v = (self.i * {n} + self.j) * {n} + self.input
        self.next(self.j2)

    @step
    def j2(self, inputs):
        self.s = sum(x.v for x in inputs)
        self.next(self.j1)

    @step
    def j1(self, inputs):
        self.s = sum(x.s for x in inputs)
        self.next(self.j0)

    @step
    def j0(self, inputs):
        self.total = sum(x.s for x in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total =", self.total)


if __name__ == "__main__":
    {name}()
'''


def nested3(n: int) -> tuple[str, str]:
    """(class name, source) of a 3-level nested foreach n x n x n (n**3 leaf tasks)."""
    name = f"Nested3x{n}Flow"
    return name, _NESTED3.format(name=name, n=n)


def deep_nested(levels: int = 10, steps: int = 50) -> tuple[str, str]:
    """(class name, source) of a `steps`-step flow with `levels` nested foreach levels (each
    one item wide: only compiling it matters), padded with linear steps between the joins."""
    name = f"Deep{levels}x{steps}Flow"
    names = ["start"] + [f"f{i}" for i in range(1, levels)] + ["leaf"]  # every one but leaf splits
    joins = [f"j{i}" for i in range(levels, 0, -1)]
    pad = [f"p{i}" for i in range(1, steps - len(names) - len(joins))]
    order = names + joins + pad + ["end"]
    body = []
    for i, step in enumerate(order[:-1]):
        nxt = order[i + 1]
        is_join = step in joins
        arg = ", inputs" if is_join else ""
        merge = "        self.merge_artifacts(inputs)\n" if is_join else ""
        if step in names[:-1]:
            code = f"        self.items = [0]\n        self.next(self.{nxt}, foreach=\"items\")\n"
        else:
            code = f"{merge}        self.next(self.{nxt})\n"
        body.append(f"    @step\n    def {step}(self{arg}):\n{code}")
    body.append("    @step\n    def end(self):\n        pass\n")
    src = "from metaflow import FlowSpec, step\n\n\nclass {n}(FlowSpec):\n{b}\n\nif __name__ == \"__main__\":\n    {n}()\n"
    return name, src.format(n=name, b="\n".join(body))


def compile_package() -> None:
    """Byte-compile dagster-metaflow, as any install of it is: this machine sets
    PYTHONDONTWRITEBYTECODE=1, so an editable checkout never gets `__pycache__` and every
    command compiled the package from source (~0.15 s of a `trigger --wait`), which no
    user's install does. Dependencies are compiled at install already."""
    import compileall

    root = Path(__file__).resolve().parent.parent
    for package in ("dagster_metaflow", "metaflow_extensions"):
        compileall.compile_dir(str(root / package), quiet=1)


def bench_env(root: Path) -> dict[str, str]:
    """The environment of a benchmark's commands: a fresh Dagster instance (telemetry off)
    in `root/home` and Metaflow's local datastore under `root`; the package byte-compiled
    (`compile_package`)."""
    compile_package()
    home = root / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = dict(os.environ, DAGSTER_HOME=str(home), METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root))
    env.setdefault("USER", "bench")
    return env


def local_servers() -> ModuleType:
    """The e2e suite's throw-away servers (`tests/local_servers.py`), loaded by path so the
    rest of `tests/` stays off `sys.path`."""
    spec = importlib.util.spec_from_file_location(
        "local_servers", Path(__file__).resolve().parent.parent / "tests" / "local_servers.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
