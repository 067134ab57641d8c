"""Names in Dagster's alphabet.

Dagster accepts `[A-Za-z0-9_]+` for job, op and mapping-key names and forbids a few
words; Metaflow step and flow names are Python identifiers (possibly non-ASCII). Every
function here is deterministic so the same flow always compiles to the same file.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable

DAGSTER_NAME = re.compile(r"^[A-Za-z0-9_]+$")

# Names Dagster refuses for ops/jobs (dagster._core.definitions.utils.DISALLOWED_NAMES)
# plus the words the developers' guide lists as traps.
RESERVED_NAMES = frozenset(
    {
        "context",
        "conf",
        "config",
        "meta",
        "arg_dict",
        "dict",
        "input_arg_dict",
        "output_arg_dict",
        "int",
        "str",
        "float",
        "bool",
        "input",
        "output",
        "type",
    }
)


def to_dagster_alphabet(name: str) -> str:
    """Map any string into `[A-Za-z0-9_]+`, escaping other characters reversibly-ish.

    ASCII letters, digits and `_` pass through; anything else becomes `_x<hex>_`, so
    `schritt_ä` -> `schritt__xe4_`. Distinct inputs can only collide with names that
    already contain such escapes; `unique` resolves those.
    """
    out = []
    for ch in name:
        if ch.isascii() and (ch.isalnum() or ch == "_"):
            out.append(ch)
        else:
            out.append(f"_x{ord(ch):x}_")
    result = "".join(out)
    return result or "_"


def unique(name: str, taken: set[str]) -> str:
    """Return `name`, or `name_2`, `name_3`, ... whichever is not in `taken`; record it."""
    candidate = name
    n = 2
    while candidate in taken:
        candidate = f"{name}_{n}"
        n += 1
    taken.add(candidate)
    return candidate


def op_names(steps: Iterable[str]) -> dict[str, str]:
    """Op name per step: `op_<step>`, escaped into Dagster's alphabet, collision-free."""
    taken: set[str] = set()
    return {step: unique("op_" + to_dagster_alphabet(step), taken) for step in steps}


def job_name_for(flow_name: str, project_prefix: str | None = None) -> str:
    """Default job name: the flow name (or `<project>_<branch>_<Flow>`) in Dagster's alphabet."""
    raw = f"{project_prefix}_{flow_name}" if project_prefix else flow_name
    name = to_dagster_alphabet(raw.replace(".", "_").replace("-", "_"))
    if name in RESERVED_NAMES:
        name += "_job"
    return name


def validate_job_name(name: str) -> str | None:
    """Return why `name` cannot be a Dagster job name, or None when it can."""
    if not DAGSTER_NAME.match(name):
        return (
            f"job name {name!r} is not a valid Dagster name: use only letters, digits and "
            "underscores ([A-Za-z0-9_]+)"
        )
    if name in RESERVED_NAMES:
        return f"job name {name!r} is reserved by Dagster; choose another --name"
    return None


def python_identifier(name: str, taken: set[str]) -> str:
    """A valid, non-keyword, unique Python identifier derived from `name`; recorded in `taken`."""
    ident = to_dagster_alphabet(name)
    if ident[0].isdigit():
        ident = "_" + ident
    if keyword.iskeyword(ident) or keyword.issoftkeyword(ident):
        ident += "_"
    return unique(ident, taken)


def config_field_name(name: str, taken: set[str]) -> str:
    """Field of the generated Config class for a Metaflow parameter name.

    `learning-rate` -> `learning_rate` (as Metaflow maps it to an environment variable);
    pydantic refuses fields starting with `_`, so such names get a `p_` prefix. The original
    name stays reachable through the field's alias.
    """
    ident = to_dagster_alphabet(name.replace("-", "_"))
    if not ident[0].isalpha():
        ident = "p_" + ident.lstrip("_") if ident.strip("_") else "p_"
    if keyword.iskeyword(ident) or keyword.issoftkeyword(ident):
        ident += "_"
    return unique(ident, taken)


UBF = "ubf"  # last part of the mapping key / task id of an unbounded-foreach control task


def mapping_key(indices: Iterable[int], ubf: bool = False) -> str:
    """Dagster mapping key for a foreach index path: (3, 1) -> `3_1`; the control task of an
    unbounded foreach below (3,) -> `3_ubf`."""
    return "_".join([*(str(i) for i in indices), *([UBF] if ubf else [])])


def indices_from_mapping_key(key: str | None) -> tuple[int, ...]:
    """Inverse of `mapping_key` (the index path only); None or '' means "not inside a foreach"."""
    if not key:
        return ()
    return tuple(int(part) for part in key.split("_") if part != UBF)


def is_ubf_key(key: str | None) -> bool:
    """Whether a mapping key places the control task of an unbounded foreach."""
    return key is not None and key.rsplit("_", 1)[-1] == UBF


CHUNK_PREFIX = "tasks_"  # mapping key of a chunk of foreach tasks: `tasks_<first>_to_<last>`
CHUNK_PARENT = "_in_"  # ... of the children of a nested foreach task: `..._in_<its index path>`


def chunk_key(first: int, last: int, parent: Iterable[int] = ()) -> str:
    """Dagster mapping key of one chunk of a foreach's tasks (indices first..last of the
    children of the foreach task at index path `parent`, () at top level): readable in the
    UI (`chunk_train[tasks_0_to_19]`, `chunk_leaf[tasks_0_to_19_in_3_1]`), never a task's
    index path."""
    key = f"{CHUNK_PREFIX}{first}_to_{last}"
    return f"{key}{CHUNK_PARENT}{mapping_key(parent)}" if parent else key


def chunk_range(key: str | None) -> range | None:
    """The last foreach index of the tasks a chunk's mapping key covers; None for any other
    key (`chunk_tasks` gives their whole index paths)."""
    tasks = chunk_tasks(key)
    return None if tasks is None else tasks[1]


def chunk_tasks(key: str | None) -> tuple[tuple[int, ...], range] | None:
    """(the parent's index path, the range of last indices) of the tasks a chunk's mapping
    key covers; None for any other key."""
    if not key or not key.startswith(CHUNK_PREFIX):
        return None
    span, _, parent = key[len(CHUNK_PREFIX) :].partition(CHUNK_PARENT)
    first, _, last = span.partition("_to_")
    return indices_from_mapping_key(parent), range(int(first), int(last) + 1)


def task_id_for(step: str, mapping_key: str | None = None, iteration: int = 0) -> str:
    """Readable task id, unique within the run (as natively), from the step and its place.

    `train`, `train-3`, `train-3-1` (foreach index path); iterations of a recursive step after
    the first get `-r<n>`; the control task of an unbounded foreach ends in `-ubf`. Step names
    are identifiers, so no two steps share an id, and ids never look numeric.
    """
    parts = [step, *(str(i) for i in indices_from_mapping_key(mapping_key))]
    if is_ubf_key(mapping_key):
        parts.append(UBF)
    base = "-".join(parts)
    return f"{base}-r{iteration}" if iteration else base
