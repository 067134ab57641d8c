"""FlowIR -> Dagster definitions source text.

Codegen never touches Metaflow objects: the translator turns the IR and its wiring plan into
specs (frozen records, op_specs.py), and `templates/definitions.py.j2` with its macros writes
every line of Python from them, inserting every value with `repr` (the `py` filter) so any
step name, parameter name or default stays valid Python. The result is checked with
`ast.parse` before it is returned.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import sys
from typing import Any

import jinja2
from jinja2 import nodes

from .ir import FlowIR
from .op_specs import OP_INPUT_NAMES, importable_names
from .translator import ENGINE_EXECUTORS, CodegenError, Translator

__all__ = ["ENGINE_EXECUTORS", "CodegenError", "doctext", "py", "render", "reserved_names"]


def py(value: Any) -> str:
    """Python literal for `value` (the template's `py` filter); valid for any input value."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return f"float({str(value)!r})"
    if isinstance(value, tuple):
        inner = ", ".join(py(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(py(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py(k)}: {py(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        text = repr(value)
        if text.startswith("'") and '"' not in value:
            # prefer double quotes, as formatters do; repr already escaped everything else
            text = '"' + text[1:-1].replace("\\'", "'") + '"'
        return text
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    raise CodegenError(f"internal error: cannot write {type(value).__name__} value {value!r}")


def doctext(value: Any) -> str:
    """`value` as text that is safe inside the generated module's \"\"\"docstring\"\"\": one line,
    backslashes, control characters and non-ASCII escaped, quotes escaped."""
    return str(value).encode("unicode_escape").decode("ascii").replace('"', '\\"')


_OPTIONS: dict[str, Any] = {
    "undefined": jinja2.StrictUndefined,
    "keep_trailing_newline": True,
    "trim_blocks": True,
    "lstrip_blocks": True,
    "autoescape": False,
}


class _TemplateCache(jinja2.FileSystemBytecodeCache):
    """The templates compiled once per machine, not at every `create` (lexing, parsing and
    compiling `definitions.py.j2` and `macros.j2`: ~55 ms of each). Jinja's own cache: a
    per-user directory under the temporary directory (mode 0700, its owner checked), a
    file per template keyed by its path and checked against its source by Jinja; our file
    names also carry a digest of what else the compiled code depends on (the Jinja release,
    the Python build, the environment's options), so another of those never reads it. A
    cache that cannot be written or read is no cache."""

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except OSError:
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


def _template_cache() -> jinja2.BytecodeCache | None:
    compiled_by = repr((jinja2.__version__, sys.version, sorted(_OPTIONS.items())))
    digest = hashlib.sha256(compiled_by.encode()).hexdigest()[:16]
    try:
        return _TemplateCache(pattern=f"__dagster_metaflow_{digest}_%s.cache")
    except (OSError, RuntimeError):  # no safe directory: compile every time
        return None


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("dagster_metaflow", "templates"),
    bytecode_cache=_template_cache(),
    **_OPTIONS,
)
_ENV.filters["py"] = py
_ENV.filters["doc"] = doctext

# How the templates' literal text binds a name (PEP 8 layout: keyword arguments have no
# spaces around `=`, assignments do): `name = ...` at a line start (or after a block
# macro's output, whose lines end in a newline; `\0` stands for an inserted expression),
# a parameter `(name: T` / `, name: T`, or `def name(` / `class name(`.
_BINDS = (
    re.compile(r"(?m)(?:^|\0)[ \t]*([A-Za-z_]\w*) = "),
    re.compile(r"[(,][ \t]*([A-Za-z_]\w*): "),
    re.compile(r"\b(?:def|class)[ \t]+([A-Za-z_]\w*)\("),
)


def template_bindings() -> frozenset[str]:
    """Names the templates' own text binds in the generated module (FLOW, TAGS, `_run_step`,
    `defs`, an op's `context`, `run_id`, ...), read from the literal text of every template;
    expressions inserted into that text count as opaque."""
    assert _ENV.loader is not None
    names: set[str] = set()
    for name in _ENV.list_templates(extensions=["j2"]):
        source = _ENV.loader.get_source(_ENV, name)[0]
        for output in _ENV.parse(source).find_all(nodes.Output):
            text = "".join(
                n.data if isinstance(n, nodes.TemplateData) else "\0" for n in output.nodes
            )
            names.update(m.group(1) for pattern in _BINDS for m in pattern.finditer(text))
    return frozenset(names)


# `template_bindings()`, kept here so that `create` does not lex and parse the templates a
# second time (~20 ms); the unit tests check it against the templates, so a template edit
# that binds a new name (and so changes the variable names of generated files) shows here
TEMPLATE_BINDINGS = frozenset(
    {
        "FLOW", "TAGS", "TRIGGERS", "defs", "context", "config", "run_id", "task",
        "_run_step", "_init_run", "_fan_out", "_run_id", "_task_id", "_split_index",
        "_fan_out_all", "_regroup", "_mapper_tasks", "_switch", "_run_loop", "_materialize",
        "_run_chunk", "_chunk_tasks",
    }
)  # fmt: skip


@functools.cache
def reserved_names() -> frozenset[str]:
    """Names the generated module binds itself, which generated variables must not shadow:
    what the templates write, every name a spec may import, and the ops' fixed inputs."""
    return TEMPLATE_BINDINGS | importable_names() | OP_INPUT_NAMES


def render(ir: FlowIR) -> str:
    """Render the definitions file for `ir`; raises CodegenError on unsupported shapes."""
    spec = Translator(ir, reserved_names()).definitions()
    text = _ENV.get_template("definitions.py.j2").render(m=spec, ir=ir)
    try:
        ast.parse(text)
    except SyntaxError as exc:  # a bug here, never the user's fault: say so loudly
        raise CodegenError(f"internal error: generated code does not parse: {exc}") from exc
    return text
