"""The click options of `flow.py dagster launch-step`, made from TaskOptions' CLI table.

Metaflow's CLI (its vendored click) parses them, so the options an op writes with
`TaskOptions.cli_args` are read back by `TaskOptions.from_cli` without being restated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, TypeVar

from metaflow._vendor import click

from ..task_options import CLI_OPTIONS, TaskOptions

F = TypeVar("F", bound=Callable[..., Any])


def task_options_cli(fn: F) -> F:
    """Add a `step` argument and one click option per CLI_OPTIONS entry (listed in its order)."""
    defaults = {f.name: f.default for f in fields(TaskOptions)}
    for opt in reversed(CLI_OPTIONS):
        default = defaults[opt.field]
        attrs: dict[str, Any] = {"help": opt.help} if opt.help else {}  # (this click wants str)
        fn = click.option(
            opt.flag,
            opt.field,
            type=opt.type,
            required=opt.required,
            multiple=opt.multiple,
            default=None if default is MISSING or opt.required else default,
            **attrs,
        )(fn)
    return click.argument("step")(fn)
