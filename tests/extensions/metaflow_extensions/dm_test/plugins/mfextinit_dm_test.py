# A tiny Metaflow extension for the tests: step decorators shipped by an extension package.
STEP_DECORATORS_DESC = [
    ("dm_stamp", ".stamp.StampDecorator"),
    ("dm_runtime_only", ".stamp.RuntimeOnlyDecorator"),
]
