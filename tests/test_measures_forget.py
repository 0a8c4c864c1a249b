"""Forgetting events, learning epochs and the collapse detector against hand-made cases."""

import numpy as np
import pytest

from rotelab.measures.curves import find_collapses
from rotelab.measures.examples import (example_summary, first_correct, forgetting_events, forgetting_score,
                                       presentations_to_learn)

# rows: epochs 0..4; columns: 5 examples
C = np.array([[0, 1, 1, 0, 1],
              [1, 0, 1, 0, 1],
              [0, 1, 1, 0, 1],
              [1, 0, 1, 0, 0],
              [1, 1, 1, 0, 1]], dtype=bool)


def test_forgetting_events_by_hand():
    # ex0: 0 1 0 1 1 -> one 1->0; ex1: 1 0 1 0 1 -> two; ex2 never; ex3 never learned; ex4: 1 1 1 0 1 -> one
    assert forgetting_events(C).tolist() == [1, 2, 0, 0, 1]


def test_first_correct_and_presentations_to_learn_by_hand():
    assert first_correct(C).tolist() == [1, 0, 0, -1, 0]
    # last wrong presentation + 1: ex0 wrong at 2 -> 3; ex1 at 3 -> 4; ex2 never -> 0; ex3 wrong at the end -> 5
    assert presentations_to_learn(C).tolist() == [3, 4, 0, 5, 4]
    assert forgetting_score(C).tolist() == [1, 2, 0, 5, 1]     # never learned ranks as most forgettable


def test_example_summary_counts():
    corrupted = np.array([0, 1, 0, 1, 0], dtype=bool)
    s = example_summary(C, np.arange(1, 6), corrupted)
    assert s["never_learned"] == 1 and s["never_forgotten"] == 1     # ex3; ex2
    # the never-learned example has its own bin, not bin 0 with the unforgettable one
    assert s["forgetting_histogram"] == {"0": 1, "1": 2, "2": 1, "never_learned": 1}
    assert s["clean"]["examples"] == 3 and s["corrupted"]["examples"] == 2
    assert s["clean"]["first_learned"]["mean"] == pytest.approx((1 + 0 + 0) / 3)   # 0-based presentation index
    assert s["corrupted"]["first_learned"]["n"] == 1 and s["corrupted"]["never_learned"] == 1
    assert s["corrupted"]["presentations_to_learn"]["mean"] == pytest.approx((4 + 5) / 2)
    assert s["clean"]["forgetting_events"]["mean"] == pytest.approx(2 / 3)
    assert s["first_epoch"] == 1 and s["last_epoch"] == 5 and s["presentations"] == 5


def toneva_statistics(correct: np.ndarray):
    """Toneva et al.'s compute_forgetting_statistics and the ranking key of sort_examples_by_forgetting,
    written from their definitions, one example at a time (an independent implementation)."""
    n = len(correct)
    to_learn, unlearned, first_learned, score = [], [], [], []
    for acc in correct.T.astype(int):
        transitions = acc[1:] - acc[:-1]
        unlearned.append(list(np.where(transitions == -1)[0] + 2))
        zeros = np.where(acc == 0)[0]
        to_learn.append(zeros[-1] + 1 if len(zeros) else 0)
        ones = np.where(acc == 1)[0]
        first_learned.append(ones[0] if len(ones) else np.nan)
        score.append(n if np.isnan(first_learned[-1]) else len(unlearned[-1]))
    return np.array(to_learn), unlearned, np.array(first_learned), np.array(score)


@pytest.mark.parametrize("p", [0.2, 0.6, 0.95])
def test_every_field_agrees_with_toneva_et_al(p):
    rng = np.random.default_rng(int(p * 100))
    c = rng.random((25, 300)) < p
    c[:, :5] = False                         # some never learned
    c[:, 5:10] = True                        # some never wrong
    to_learn, unlearned, first, score = toneva_statistics(c)
    assert presentations_to_learn(c).tolist() == to_learn.tolist()
    assert forgetting_events(c).tolist() == [len(u) for u in unlearned]
    ours = first_correct(c)
    assert np.array_equal(ours == -1, np.isnan(first))
    assert ours[ours >= 0].tolist() == first[~np.isnan(first)].astype(int).tolist()
    assert forgetting_score(c).tolist() == score.tolist()
    s = example_summary(c, np.arange(1, 26), np.zeros(300, dtype=bool))
    learned = ~np.isnan(first)
    hist = {str(k): int(v) for k, v in enumerate(np.bincount(score[learned])) if v}
    hist["never_learned"] = int((~learned).sum())
    assert s["forgetting_histogram"] == hist
    assert s["first_learned"]["mean"] == pytest.approx(np.nanmean(first))
    assert s["presentations_to_learn"]["median"] == pytest.approx(np.median(to_learn))
    assert s["never_forgotten"] == int((learned & (score == 0)).sum())


def test_forgetting_agrees_with_a_direct_loop():
    rng = np.random.default_rng(0)
    c = rng.random((30, 200)) < 0.6
    direct = [sum(c[t - 1, i] and not c[t, i] for t in range(1, 30)) for i in range(200)]
    assert forgetting_events(c).tolist() == direct


def test_no_collapse_in_a_rising_noisy_curve():
    rng = np.random.default_rng(1)
    e = np.arange(1, 101)
    acc = np.clip(1 - np.exp(-e / 20) + 0.03 * rng.standard_normal(100), 0, 1)
    assert find_collapses(e, acc, drop=0.2, window=5) == []


def test_a_collapse_is_found_once_with_its_depth():
    e = np.arange(1, 61)
    acc = np.full(60, 0.98)
    acc[30:34] = [0.7, 0.4, 0.5, 0.9]        # epochs 31..34
    found = find_collapses(e, acc, drop=0.2, window=5)
    assert len(found) == 1
    c = found[0]
    assert c["epoch"] == 31 and c["lowest_epoch"] == 32
    assert c["before"] == pytest.approx(0.98) and c["lowest"] == pytest.approx(0.4)
    assert c["drop"] == pytest.approx(0.58)


def test_two_separate_collapses_and_the_threshold():
    e = np.arange(1, 41)
    acc = np.full(40, 0.9)
    acc[10], acc[25] = 0.5, 0.75
    assert [c["epoch"] for c in find_collapses(e, acc, 0.1, 3)] == [11, 26]
    assert [c["epoch"] for c in find_collapses(e, acc, 0.2, 3)] == [11]
