# Metaflow extension registration for dagster-metaflow.
#
# Metaflow copies this extension into every code package, so it is also loaded where
# `dagster_metaflow` is not installed: a remote task (@kubernetes, @batch) or a @conda/@pypi
# environment. The step decorator every task carries lives here and imports only Metaflow;
# the CLI and the Deployer, which need the `dagster_metaflow` package, are registered only
# where it is installed (an unresolvable plugin would stop Metaflow from importing).
from importlib.util import find_spec as _find_spec

STEP_DECORATORS_DESC = [("dagster_internal", ".dagster_internal.DagsterInternalDecorator")]

if _find_spec("dagster_metaflow") is not None:
    CLIS_DESC = [("dagster", "dagster_metaflow.cli.cli")]
    DEPLOYER_IMPL_PROVIDERS_DESC = [("dagster", "dagster_metaflow.deployer.DagsterDeployer")]
