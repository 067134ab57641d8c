from __future__ import annotations

import keyword

from hypothesis import given
from hypothesis import strategies as st

from dagster_metaflow import naming


def test_op_names_prefix_and_unicode() -> None:
    ops = naming.op_names(["start", "input", "schritt_ä", "end"])
    assert ops == {"start": "op_start", "input": "op_input", "schritt_ä": "op_schritt__xe4_", "end": "op_end"}


def test_op_names_unique_even_when_escapes_collide() -> None:
    ops = naming.op_names(["a_x2d_", "a-"])
    assert len(set(ops.values())) == 2


@given(st.lists(st.text(min_size=1, max_size=10), unique=True, max_size=20))
def test_op_names_always_valid_and_unique(steps: list[str]) -> None:
    ops = naming.op_names(steps)
    assert len(set(ops.values())) == len(steps)
    assert all(naming.DAGSTER_NAME.match(v) for v in ops.values())


@given(st.text(min_size=1, max_size=20))
def test_python_identifier(name: str) -> None:
    ident = naming.python_identifier(name, set())
    assert ident.isidentifier() and not keyword.iskeyword(ident)


def test_job_name_validation() -> None:
    assert naming.validate_job_name("Good_Name1") is None
    assert "not a valid Dagster name" in (naming.validate_job_name("bad-name") or "")
    assert "reserved" in (naming.validate_job_name("config") or "")
    assert naming.job_name_for("proj.main.Flow".replace(".", "_")) == "proj_main_Flow"


def test_mapping_keys_roundtrip() -> None:
    assert naming.mapping_key((3, 1)) == "3_1"
    assert naming.indices_from_mapping_key("3_1") == (3, 1)
    assert naming.indices_from_mapping_key(None) == ()
