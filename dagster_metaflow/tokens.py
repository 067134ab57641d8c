"""Production tokens and who may change a deployment, as Metaflow's schedulers rule it: the
deployer, or anyone holding the deployment's production token.

Tokens live in Metaflow's token files (`production_token.store_token`), found by a prefix
of the deployment's name or @project branch; the deployment record keeps owner and token.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DagsterMetaflowException, IncorrectProductionToken

if TYPE_CHECKING:
    from .deployments import Deployment

Echo = Callable[..., None]


@dataclass(frozen=True)
class TokenOptions:
    """`create`'s token options: how the production token of a (re)deployment is chosen."""

    authorize: str | None = None
    given_token: str | None = None  # --new-token
    generate_new_token: bool = False
    identity: str = "production"  # or "user": runs run as the deploying user


def token_prefix(job_name: str) -> str:
    """Where Metaflow keeps this deployment's production token, for the flow Metaflow loaded
    (its @project and branch)."""
    from metaflow import current

    from .deployments import token_prefix as prefix_of

    return prefix_of(job_name, current.get("project_name"), current.get("branch_name"))


def username() -> str:
    """The user Metaflow runs as: the owner of what `create` records."""
    from metaflow.util import get_username

    user = get_username()
    if not user:
        raise DagsterMetaflowException(
            "no user name: set METAFLOW_USER (Metaflow ignores USER=root)"
        )
    return str(user)


def check_authorized(dep: Deployment | Any | None, authorize: str | None, action: str) -> None:
    """A deployment made by someone else may only be changed with its production token (the
    token file is found from the record)."""
    from metaflow.util import get_username

    from .deployments import authorization_problem

    problem = authorization_problem(dep, authorize, get_username(), action)
    if problem:
        raise IncorrectProductionToken(problem)


def resolve_token(prev: Deployment | None, prefix: str, options: TokenOptions, echo: Echo) -> str:
    """The production token of a (re)deployment, as `argo-workflows create` resolves it:
    checked, announced and stored in Metaflow's token file."""
    from metaflow import current
    from metaflow.plugins.aws.step_functions.production_token import new_token, store_token

    check_authorized(prev, options.authorize, "create")
    prev_token = prev.production_token if prev is not None else None
    given = options.given_token
    if given:
        if current.get("project_name"):
            raise DagsterMetaflowException(
                "--new-token is not supported for @project flows; use --generate-new-token"
            )
        token = given[len("production:") :] if given.startswith("production:") else given
    elif prev_token is None or options.generate_new_token:
        token = new_token(prefix, prev_token)
        if token is None:
            raise DagsterMetaflowException(
                "--generate-new-token is not supported after --new-token; use --new-token"
            )
        echo("A new production token was generated.")
    else:
        token = prev_token
    _announce(str(token), options.identity, echo)
    store_token(prefix, token)
    return str(token)


def _announce(token: str, identity: str, echo: Echo) -> None:
    """Tell the deployer the runs' namespace and how others may redeploy."""
    if identity == "production":
        echo("The namespace of this production flow is")
        echo(f"    production:{token}", fg="green")
    else:
        echo(f"Runs run as {username()} (--identity user), in the namespace")
        echo(f"    user:{username()}", fg="green")
    echo("Others can deploy new versions of it with")
    echo(
        f"    python {os.path.basename(sys.argv[0])} dagster create --authorize {token}", fg="green"
    )


__all__ = ["TokenOptions", "check_authorized", "resolve_token", "token_prefix", "username"]
