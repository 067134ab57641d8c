"""Metaflow's Deployer API for Dagster: `Deployer("flow.py").dagster().create()`.

Registered through `DEPLOYER_IMPL_PROVIDERS_DESC` with TYPE `dagster`. This module imports
only `metaflow.runner.deployer_impl` (Metaflow resolves deployer plugins while importing
`metaflow.runner.deployer`); the DeployedFlow/TriggeredRun classes live in
`deployer_objects`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from metaflow.runner.deployer_impl import DeployerImpl

if TYPE_CHECKING:
    from .deployer_objects import DagsterDeployedFlow


class DagsterDeployer(DeployerImpl):
    """Deployer for Dagster.

    Parameters
    ----------
    name : str, optional, default None
        Deployment (Dagster job) name. The flow name (or P_<branch>_<Flow> with @project)
        is used when not given.
    """

    TYPE: ClassVar[str | None] = "dagster"

    def __init__(self, deployer_kwargs: dict[str, str], **kwargs: Any) -> None:
        self._deployer_kwargs = deployer_kwargs
        super().__init__(**kwargs)

    @property
    def deployer_kwargs(self) -> dict[str, Any]:
        return self._deployer_kwargs

    @staticmethod
    def deployed_flow_type() -> type[DagsterDeployedFlow]:
        from .deployer_objects import DagsterDeployedFlow

        return DagsterDeployedFlow

    def create(self, **kwargs: Any) -> DagsterDeployedFlow:
        """Compile the flow, write the definitions file and record the deployment.

        Parameters
        ----------
        file : str, optional
            Where to write the definitions file (default `<job>_dagster.py` in cwd).
        tags : List[str], optional
            Metaflow tags for every run.
        user_namespace : str, optional
            Namespace the steps run in instead of the production namespace.
        with_decorators : List[str], optional
            Step decorators added to every step.
        workflow_timeout : int, optional
        max_workers : int, optional
        executor : str, optional
        authorize / generate_new_token / given_token :
            Production token handling, as `argo-workflows create`: redeploying someone
            else's deployment needs `authorize=TOKEN` (IncorrectProductionToken without).
        """
        from .deployer_objects import DagsterDeployedFlow, last_stderr, raise_if_refused

        try:
            return self._create(DagsterDeployedFlow, **kwargs)  # type: ignore[return-value]
        except RuntimeError:  # the CLI failed: a refusal is raised as the CLI's line
            raise_if_refused(last_stderr(self))
            raise

    @property
    def dagster_home(self) -> str | None:
        return (self.env_vars or {}).get("DAGSTER_HOME")
