import pytest

from layerlab.core.compute import params


def test_a_string_spelling_a_list_becomes_the_list():
    cfg = params.override({"rhos": [0.01], "limit": 100, "affected": None},
                          rhos="[0.1, 0.5]", limit=None, affected="[8, 16]")
    assert cfg == {"rhos": [0.1, 0.5], "limit": 100, "affected": [8, 16]}
    assert params.override({"rhos": [0.01]}, rhos=(0.2,)) == {"rhos": [0.2]}


def test_anything_else_where_a_list_is_expected_is_refused_with_the_way_to_pass_it():
    with pytest.raises(ValueError, match=r"rhos: '0.1' is not a list; .*-p rhos '\[0.1, 0.5\]'.*-y \"rhos: \[0.1, 0.5\]\""):
        params.override({"rhos": [0.01]}, rhos="0.1")
    with pytest.raises(ValueError, match="layers: '\\[1, 2' is not a list"):
        params.override({"layers": [1]}, layers="[1, 2")
