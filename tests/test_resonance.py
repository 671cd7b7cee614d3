import pytest
from hypothesis import given
from hypothesis import strategies as st

from soul.resonance import JUDGE_WEIGHTS, combine

scores = st.floats(min_value=0.0, max_value=1.0)


def test_no_judge_no_score() -> None:
    assert combine({}) is None
    assert combine({"oracle": 1.0}) is None


def test_user_counts_three_times_each_other_judge() -> None:
    assert combine({"user": 1.0, "self": 0.0, "similarity": 0.0}) == pytest.approx(0.6)
    assert combine({"self": 0.8, "similarity": 0.4}) == pytest.approx(0.6)
    assert combine({"user": 0.9}) == pytest.approx(0.9)


@given(st.dictionaries(st.sampled_from(sorted(JUDGE_WEIGHTS)), scores, min_size=1))
def test_combined_lies_between_the_judges(judged: dict[str, float]) -> None:
    combined = combine(judged)
    assert combined is not None
    assert min(judged.values()) - 1e-12 <= combined <= max(judged.values()) + 1e-12


def test_out_of_range_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        combine({"user": 1.5})
