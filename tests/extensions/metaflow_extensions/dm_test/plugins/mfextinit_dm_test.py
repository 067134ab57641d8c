# A tiny Metaflow extension for the tests: step decorators shipped by an extension package,
# and `dm-native`, the command Metaflow's own runtime launches for a task.
STEP_DECORATORS_DESC = [
    ("dm_stamp", ".stamp.StampDecorator"),
    ("dm_runtime_only", ".stamp.RuntimeOnlyDecorator"),
]
CLIS_DESC = [("dm-native", ".native_cli.cli")]
