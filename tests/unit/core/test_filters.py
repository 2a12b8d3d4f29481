import pytest
from hypothesis import given
from hypothesis import strategies as st

from cri_async.core.errors import InvalidArgument
from cri_async.core.filters import (
    Filter,
    matches_labels,
    resolve_id,
    validate_selector,
)

label_name = st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?\Z")
label_key = st.one_of(
    label_name,
    st.builds(
        lambda p, n: f"{p}/{n}",
        st.from_regex(r"\A[a-z0-9]{1,10}(\.[a-z0-9]{1,8}){0,2}\Z"),
        label_name,
    ),
)
labels = st.dictionaries(label_key, st.one_of(st.just(""), label_name), max_size=6)


@pytest.mark.parametrize(
    "selector",
    [
        {"app": "web"},
        {"io.kubernetes.pod.name": "nginx-7c5b"},
        {"io.kubernetes.pod.uid": "3f6c2d1e-0b7a-4c8e-9f1d-2a3b4c5d6e7f"},
        {"example.com/tier": ""},
        {"a": "b", "c.d/e_f": "g-h.i"},
    ],
)
def test_valid_selectors_accepted(selector: dict[str, str]) -> None:
    validate_selector(selector)


@pytest.mark.parametrize(
    ("selector", "problem"),
    [
        ({"": "x"}, "name must be"),
        ({"-app": "x"}, "name must be"),
        ({"app": "-x"}, "value"),
        ({"a" * 64: "x"}, "name must be"),
        ({"app": "x" * 64}, "value"),
        ({"UPPER.example/app": "x"}, "prefix"),
        ({"/app": "x"}, "prefix"),
        ({"app": "has space"}, "value"),
    ],
)
def test_invalid_selectors_rejected_with_message(selector: dict[str, str], problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        validate_selector(selector)
    with pytest.raises(InvalidArgument):
        Filter(labels=selector)


@given(labels, labels)
def test_selector_matches_iff_subset(obj: dict[str, str], sel: dict[str, str]) -> None:
    assert matches_labels(obj, sel) == all(k in obj and obj[k] == v for k, v in sel.items())


@given(labels)
def test_every_object_matches_its_own_labels_and_the_empty_selector(obj: dict[str, str]) -> None:
    validate_selector(obj)
    assert matches_labels(obj, obj)
    assert matches_labels(obj, {})


@given(labels, label_key, label_name)
def test_adding_a_pair_the_object_lacks_never_matches(
    obj: dict[str, str], key: str, value: str
) -> None:
    sel = {key: value}
    if obj.get(key) != value:
        assert not matches_labels(obj, sel)


hexid = st.text("0123456789abcdef", min_size=64, max_size=64)


@given(st.lists(hexid, unique=True, max_size=20), st.data())
def test_resolve_id_prefix(ids: list[str], data: st.DataObject) -> None:
    if not ids:
        assert resolve_id(ids, "ab") == []
        return
    target = data.draw(st.sampled_from(ids))
    assert resolve_id(ids, target) == [target]
    n = data.draw(st.integers(1, 64))
    prefix = target[:n]
    got = resolve_id(ids, prefix)
    assert target in got
    assert got == [i for i in ids if i.startswith(prefix)] or got == [target]
