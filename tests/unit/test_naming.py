from __future__ import annotations

import keyword
from typing import Any

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


def test_task_ids_are_unique_across_steps_and_readable() -> None:
    assert naming.task_id_for("start") == "start"
    assert naming.task_id_for("body", "3_1") == "body-3-1"
    assert naming.task_id_for("loop", None, 2) == "loop-r2"
    ids = {naming.task_id_for(s, k) for s in ("a", "b", "ubf") for k in (None, "0", "1_2", "ubf", "1_ubf")}
    assert len(ids) == 15
    assert not any(i.isdigit() for i in ids)


def test_unbounded_foreach_control_keys() -> None:
    from dagster_metaflow.runtime.ids import indices_of, is_ubf_control

    assert naming.mapping_key((), ubf=True) == "ubf"
    assert naming.mapping_key((2,), ubf=True) == "2_ubf"
    assert naming.is_ubf_key("2_ubf") and not naming.is_ubf_key("2") and not naming.is_ubf_key(None)
    assert naming.indices_from_mapping_key("2_ubf") == (2,)
    assert naming.task_id_for("inner", "2_ubf") == "inner-2-ubf"
    assert is_ubf_control("R/inner/inner-2-ubf") and is_ubf_control("inner-ubf")
    assert not is_ubf_control("R/ubf/ubf") and not is_ubf_control("R/inner/inner-ubf-0")
    assert indices_of("R/inner/inner-2-ubf") == (2,)


def test_unbounded_foreach_join_inputs_keep_the_control_tasks_order(monkeypatch: Any) -> None:
    from dagster_metaflow.runtime.flow import MetaflowFlow
    from dagster_metaflow.runtime.taskstore import TaskStore

    store = MetaflowFlow(name="F", file="f.py").store
    mappers = {
        "R/inner/inner-1-ubf": [f"R/inner/inner-1-ubf-{i}" for i in range(12)],
        "R/inner/inner-0-ubf": [f"R/inner/inner-0-ubf-{i}" for i in range(12)],
    }
    monkeypatch.setattr(TaskStore, "task_datastore", lambda self, p, **kw: {"_control_mapper_tasks": mappers[p]})
    got = store.ubf_mappers(["R/inner/inner-1-ubf", "R/inner/inner-0-ubf"], "R")
    assert got == mappers["R/inner/inner-1-ubf"] + mappers["R/inner/inner-0-ubf"]  # as given, expanded in order
    # a control task cloned into a resumed run lists its origin's tasks: placed in the new run
    assert store.ubf_mappers(["R/inner/inner-0-ubf"], "S")[:2] == ["S/inner/inner-0-ubf-0", "S/inner/inner-0-ubf-1"]
