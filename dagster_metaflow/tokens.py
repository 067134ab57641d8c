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

# in every refusal for want of a token: the Deployer API tells it from other errors by it
REFUSAL_MARK = "you need its production token"

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


def flow_token_prefix(job_name: str) -> str:
    """Where Metaflow keeps this deployment's production token, for the flow Metaflow loaded
    (its @project and branch)."""
    from metaflow import current

    return token_prefix(job_name, current.get("project_name"), current.get("branch_name"))


def token_prefix(name: str, project_name: str | None = None, branch_name: str | None = None) -> str:
    """Where Metaflow keeps a deployment's production token (as its schedulers do)."""
    import base64
    from hashlib import sha1

    if project_name:
        branch = f"{project_name}.{branch_name}".encode()
        return ("mfprj-" + base64.b32encode(sha1(branch).digest()).decode()[:16]).lower()
    return f"dagster-{name}".lower()


def authorization_problem(
    dep: Deployment | None, authorize: str | None, user: str | None, action: str
) -> str | None:
    """Why the caller may not `action` (create, terminate, delete) `dep`, None if they may:
    someone other than its owner needs its production token, given as `authorize` or stored
    by an earlier `create --authorize` (Metaflow's token file), as Metaflow's Argo CLI rules.
    The CLI and the Deployer API both refuse with this one line."""
    if dep is None or not dep.production_token:
        return None
    if authorize is None:
        from metaflow.plugins.aws.step_functions.production_token import load_token

        authorize = load_token(token_prefix(dep.name, dep.project_name, dep.branch_name))
    elif authorize.startswith("production:"):
        authorize = authorize[len("production:") :]
    if (user and dep.owner == user) or authorize == dep.production_token:
        return None
    return (
        f"deployment {dep.name!r} was created by {dep.owner!r}; to {action} it {REFUSAL_MARK}: "
        f"ask them for it, then run `dagster {action} --authorize TOKEN` "
        f"(Deployer API: `{action}(authorize=TOKEN)`)"
    )


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

    problem = authorization_problem(dep, authorize, get_username(), action)
    if problem:
        raise IncorrectProductionToken(problem)


def resolve_token(prev: Deployment | None, prefix: str, options: TokenOptions) -> tuple[str, bool]:
    """The production token of a (re)deployment, as `argo-workflows create` resolves it, and
    whether it is new; checked, but neither announced nor stored (`keep_token` does that
    once the deployment is made, so a refused `create` leaves no token behind)."""
    from metaflow import current
    from metaflow.plugins.aws.step_functions.production_token import new_token

    check_authorized(prev, options.authorize, "create")
    prev_token = prev.production_token if prev is not None else None
    given = options.given_token
    if given:
        if current.get("project_name"):
            raise DagsterMetaflowException(
                "--new-token is not supported for @project flows; use --generate-new-token"
            )
        return (given[len("production:") :] if given.startswith("production:") else given), False
    if prev_token is None or options.generate_new_token:
        token = new_token(prefix, prev_token)
        if token is None:
            raise DagsterMetaflowException(
                "--generate-new-token is not supported after --new-token; use --new-token"
            )
        return str(token), True
    return prev_token, False


def keep_token(prefix: str, token: str, new: bool, options: TokenOptions, echo: Echo) -> None:
    """After a deployment was made: announce its token and store it in Metaflow's token file."""
    from metaflow.plugins.aws.step_functions.production_token import store_token

    if new:
        echo("A new production token was generated.")
    _announce(token, options.identity, echo)
    store_token(prefix, token)


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


__all__ = [
    "TokenOptions",
    "authorization_problem",
    "check_authorized",
    "flow_token_prefix",
    "keep_token",
    "resolve_token",
    "token_prefix",
    "username",
]
