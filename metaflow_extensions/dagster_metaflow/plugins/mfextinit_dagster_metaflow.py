# Metaflow extension registration for dagster-metaflow: names only, the code lives in
# the `dagster_metaflow` package.
CLIS_DESC = [("dagster", "dagster_metaflow.cli.cli")]
DEPLOYER_IMPL_PROVIDERS_DESC = [("dagster", "dagster_metaflow.deployer.DagsterDeployer")]
STEP_DECORATORS_DESC = [("dagster_internal", "dagster_metaflow.step_decorator.DagsterInternalDecorator")]
