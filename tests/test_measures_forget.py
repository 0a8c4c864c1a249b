"""Forgetting events, learning epochs and the collapse detector against hand-made cases."""

import numpy as np
import pytest

from rotelab.measures.curves import find_collapses
from rotelab.measures.examples import example_summary, first_correct, forgetting_events, learned_for_good

# rows: epochs 0..4; columns: 5 examples
C = np.array([[0, 1, 1, 0, 1],
              [1, 0, 1, 0, 1],
              [0, 1, 1, 0, 1],
              [1, 0, 1, 0, 0],
              [1, 1, 1, 0, 1]], dtype=bool)


def test_forgetting_events_by_hand():
    # ex0: 0 1 0 1 1 -> one 1->0; ex1: 1 0 1 0 1 -> two; ex2 never; ex3 never learned; ex4: 1 1 1 0 1 -> one
    assert forgetting_events(C).tolist() == [1, 2, 0, 0, 1]


def test_first_correct_and_learned_for_good_by_hand():
    assert first_correct(C).tolist() == [1, 0, 0, -1, 0]
    assert learned_for_good(C).tolist() == [3, 4, 0, -1, 4]
    wrong_at_end = C.copy()
    wrong_at_end[-1, 0] = False
    assert learned_for_good(wrong_at_end)[0] == -1


def test_example_summary_counts():
    corrupted = np.array([0, 1, 0, 1, 0], dtype=bool)
    s = example_summary(C, np.arange(1, 6), corrupted)
    assert s["never_learned"] == 1 and s["never_forgotten"] == 1     # ex3; ex2
    assert s["forgetting_histogram"] == {"0": 2, "1": 2, "2": 1}
    assert s["clean"]["examples"] == 3 and s["corrupted"]["examples"] == 2
    assert s["clean"]["first_learned_epoch"]["mean"] == pytest.approx((2 + 1 + 1) / 3)  # epochs are 1-based
    assert s["corrupted"]["first_learned_epoch"]["n"] == 1 and s["corrupted"]["never_learned"] == 1
    assert s["clean"]["forgetting_events"]["mean"] == pytest.approx(2 / 3)


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
