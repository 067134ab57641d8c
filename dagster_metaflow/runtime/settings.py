"""What `dagster create` baked into a generated file about its flow: one frozen record.

`MetaflowFlow` (flow.py) is this record plus the operations ops call; the parts of the
runtime read the record, never the facade, so they import nothing above them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..notifications import Notifications


@dataclass(frozen=True)
class FlowSettings:
    """Constants of one compiled flow (the generated file's `MetaflowFlow(...)` arguments)."""

    name: str
    file: str
    top_level_args: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    namespace: str | None = None
    datastore_type: str = "local"
    datastore_root: str | None = None
    relative_to: str | None = None  # directory `file` is relative to (the generated file's)
    # (Config field, METAFLOW_INIT_* variable, type) for every flow Parameter
    parameters: tuple[tuple[str, str, str], ...] = ()
    owner: str | None = None  # the deploying user: `user:` of every run, steps' METAFLOW_USER
    production_token: str | None = None  # steps run in namespace production:<token>
    # the flow's configs as resolved at create (Metaflow's dump_config_values, JSON text)
    config_values: str | None = None
    # Metaflow code package ({"url", "sha", "metadata"}) steps run from; normally found in
    # the deployment record (`resolve_code`), which keeps generated files deterministic
    code_package: Mapping[str, str] | None = None
    flow_fingerprint: str | None = None  # sha256 of the compiled flow file
    # @exit_hook functions, run by the executor when the run ends
    exit_hooks_on_success: tuple[str, ...] = ()
    exit_hooks_on_error: tuple[str, ...] = ()
    job_name: str | None = None  # set when the executor must find this flow from its job
    card_steps: tuple[str, ...] = ()  # steps with @card: their ops link the cards
    # the graph's transitions (Metaflow's out_funcs) of every step, and its switch steps:
    # every finished task's `self.next()` is checked against them as Metaflow's runtime does
    transitions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    switch_steps: tuple[str, ...] = ()
    notifications: Notifications | None = None  # run-end messages (create --notify-*)
    # publish `metaflow.<Flow>.end` when a run succeeds (create --auto-emit-events, default)
    auto_emit_events: bool = True
