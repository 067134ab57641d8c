"""The exceptions dagster-metaflow raises to its callers: Metaflow exceptions, so the CLI
prints them as one headed line and the Deployer API raises them as Metaflow does."""

from __future__ import annotations

from metaflow.exception import MetaflowException


class DagsterMetaflowException(MetaflowException):
    """A refusal or failure the user can act on; its message is the whole explanation."""

    headline = "dagster-metaflow error"


class CompileError(DagsterMetaflowException):
    """The flow could not be compiled into a definitions file (`compiler.compile_flow`)."""


class IncorrectProductionToken(DagsterMetaflowException):
    """Someone who is not the deployer changes a deployment without its production token
    (CLI and Deployer API alike; Metaflow's Argo integration has an exception of this name)."""


__all__ = ["CompileError", "DagsterMetaflowException", "IncorrectProductionToken"]
