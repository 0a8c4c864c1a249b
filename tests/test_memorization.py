"""Memorization, influence, C-score, AUM, data maps and detection, against hand-computed cases, a
direct loop implementation and a simulation with known probabilities."""

import numpy as np
import pytest

from rotelab.measures.memorization import aum, cscore, data_map, detection, influence, memorization, subset_masks


def test_memorization_by_hand():
    trained = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [0, 0, 0]], bool)
    correct = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 0]], bool)
    est = memorization(trained, correct)
    # example 0: right on both models that saw it, wrong on both that did not -> 1
    # example 1: in {1, 2}: right on 1 of 2; out {0, 3}: right on 1 of 2 -> 0
    # example 2: in {0, 2}: right on both; out {1, 3}: right on 1 of 2 -> 0.5
    np.testing.assert_allclose(est.value, [1.0, 0.0, 0.5])
    np.testing.assert_allclose(est.se, [0.0, np.sqrt(0.25 + 0.25), np.sqrt(0 + 0.25)])
    np.testing.assert_array_equal(est.n_in, [2, 2, 2])
    np.testing.assert_allclose(cscore(trained, correct).value, [0.0, 0.5, 0.5])


def loop_estimates(trained, correct, correct_test):
    """The definitions written out example by example (the independent implementation)."""
    K, N = trained.shape
    mem, cs = np.full(N, np.nan), np.full(N, np.nan)
    infl = np.full((N, correct_test.shape[1]), np.nan)
    for i in range(N):
        ins = [k for k in range(K) if trained[k, i]]
        outs = [k for k in range(K) if not trained[k, i]]
        if ins and outs:
            mem[i] = np.mean([correct[k, i] for k in ins]) - np.mean([correct[k, i] for k in outs])
            cs[i] = np.mean([correct[k, i] for k in outs])
            for j in range(correct_test.shape[1]):
                infl[i, j] = np.mean([correct_test[k, j] for k in ins]) - np.mean([correct_test[k, j] for k in outs])
    return mem, cs, infl


def test_matrix_estimates_equal_the_written_out_definitions():
    rng = np.random.default_rng(1)
    trained = rng.random((30, 40)) < 0.7
    trained[:, 0] = True   # an example every model saw: no estimate
    correct = rng.random((30, 40)) < 0.6
    correct_test = rng.random((30, 25)) < 0.5
    mem, cs, infl = loop_estimates(trained, correct, correct_test)
    np.testing.assert_allclose(memorization(trained, correct).value, mem, atol=1e-12)
    np.testing.assert_allclose(cscore(trained, correct).value, cs, atol=1e-12)
    dense = influence(trained, correct_test, block=7)
    assert dense.dtype == np.float16 and dense.shape == (40, 25)
    np.testing.assert_allclose(dense.astype(float), infl, atol=1e-3)   # float16
    assert np.isnan(memorization(trained, correct).value[0]) and np.isnan(dense[0]).all()
    idx, val = influence(trained, correct_test, top=5, block=7)
    assert idx.shape == (25, 5) and val.dtype == np.float16
    for j in range(25):   # the 5 largest of each test column, in decreasing order (NaN rows never chosen)
        col = np.where(np.isnan(infl[:, j]), -np.inf, infl[:, j])
        np.testing.assert_allclose(np.sort(col)[::-1][:5], infl[idx[j], j], atol=1e-12)
        assert 0 not in idx[j]
        np.testing.assert_allclose(val[j].astype(float), infl[idx[j], j], atol=1e-3)


def test_intervals_cover_known_probabilities():
    """Models drawn with P[right | in] = a_i and P[right | out] = b_i known (3,000 examples, 200 models,
    r = 0.7). The score intervals cover a_i - b_i and b_i for 93-97% of the examples (our threshold),
    also where b_i < 0.05, as a corrupted example's often is; +-1.96 se covers there far less (it is
    reported, and this measures why the intervals are score intervals)."""
    rng = np.random.default_rng(0)
    K, N = 200, 3000
    a = rng.uniform(0.5, 1.0, N)
    b = rng.uniform(0.0, 0.9, N)
    trained = subset_masks(N, K, 0.7, rng)
    correct = np.where(trained, rng.random((K, N)) < a, rng.random((K, N)) < b)
    extreme = b < 0.05
    assert extreme.sum() > 100
    mem, cs = memorization(trained, correct), cscore(trained, correct)
    for est, truth in ((mem, a - b), (cs, b)):
        covered = (est.lo <= truth) & (truth <= est.hi)
        assert 0.93 <= covered.mean() <= 0.97, covered.mean()
        assert covered[extreme].mean() >= 0.93, covered[extreme].mean()
        assert np.all(est.lo <= est.value + 1e-12) and np.all(est.value <= est.hi + 1e-12)
    wald = np.abs(cs.value - b) <= 1.96 * cs.se
    assert wald[extreme].mean() < 0.8 and 0.93 <= wald[~extreme & (b > 0.2)].mean() <= 0.97


def test_wilson_by_hand():
    from rotelab.measures.memorization import wilson
    lo, hi = wilson(0.0, 10)   # 0 of 10: (0, z^2 / (n + z^2)) = (0, 0.2775)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    lo, hi = wilson(0.5, 100)  # 50 of 100: 0.5 +- 0.0966 (Wilson, z = 1.96)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_subset_masks():
    rng = np.random.default_rng(0)
    m = subset_masks(100, 8, 0.7, rng)
    assert m.shape == (8, 100) and (m.sum(axis=1) == 70).all()
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    m = subset_masks(100, 5, 0.5, rng, labels)
    for c, size in enumerate([10, 20, 30, 40]):
        assert (m[:, labels == c].sum(axis=1) == size // 2).all()
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            subset_masks(10, 2, bad, rng)
    with pytest.raises(ValueError, match="leaves no example"):
        subset_masks(10, 2, 0.01, rng, np.arange(10) % 5)


def test_aum_and_data_map_by_hand():
    np.testing.assert_allclose(aum([[1.0, -1.0], [3.0, -3.0]]), [2.0, -2.0])
    dm = data_map([[0.2, 1.0], [0.6, 1.0]], [[False, True], [True, True]])
    np.testing.assert_allclose(dm["confidence"], [0.4, 1.0])
    np.testing.assert_allclose(dm["variability"], [0.2, 0.0])
    np.testing.assert_allclose(dm["correctness"], [0.5, 1.0])


def test_detection():
    from sklearn.metrics import average_precision_score, roc_auc_score
    rng = np.random.default_rng(0)
    corrupted = rng.random(500) < 0.2
    score = corrupted + rng.normal(0, 0.8, 500)
    d = detection(score, corrupted, n_boot=200)
    assert d["auroc"] == pytest.approx(roc_auc_score(corrupted, score))
    assert d["ap"] == pytest.approx(average_precision_score(corrupted, score))
    assert d["auroc_ci"][0] < d["auroc"] < d["auroc_ci"][1] and d["n"] == 500
    assert detection(corrupted.astype(float), corrupted, n_boot=20)["auroc"] == 1.0
    assert detection(-corrupted.astype(float), corrupted, n_boot=20)["auroc"] == 0.0
    with_nan = score.copy()
    with_nan[:10] = np.nan
    assert detection(with_nan, corrupted, n_boot=20)["n"] == 490
    with pytest.raises(ValueError, match="both"):
        detection(score, np.zeros(500, bool))


def test_the_influence_null_finds_planted_pairs_and_little_else():
    """Known answer: test example j is right exactly when its planted train example was trained on
    (influence 1), the other test examples are right at random. The planted pairs beat their null
    maxima in every permutation; of the random ones about `level` do (the null's own rate)."""
    from rotelab.measures.memorization import influence, influence_null, pair_pvalues, pairs_above
    rng = np.random.default_rng(0)
    k, n, m = 64, 200, 100
    trained = rng.random((k, n)) < 0.7
    correct = rng.random((k, m)) < 0.5
    planted = {j: 3 * j for j in range(10)}
    for j, i in planted.items():
        correct[:, j] = trained[:, i]
    idx, val = influence(trained, correct, top=5)
    null = influence_null(trained, correct, n_perm=40)
    p = pair_pvalues(val, null["max"])
    assert all(idx[j, 0] == i and val[j, 0] == pytest.approx(1.0) for j, i in planted.items())
    assert np.all(p[:10, 0] == 1 / 41)
    assert np.mean(p[10:, 0] <= 0.05) < 0.15     # the unplanted test examples: chance level (0.05) at most about
    assert null["max"].shape == (40, m) and np.all(null["max"][:, :10] < 0.6)   # the planting is broken by shuffling
    assert pairs_above(trained, correct, 0.9) == 10


def test_pair_pvalues_by_hand():
    from rotelab.measures.memorization import pair_pvalues
    null = np.array([[0.1, 0.5], [0.3, 0.2], [0.2, 0.9]])   # 3 permutations, 2 test examples
    p = pair_pvalues(np.array([[0.25, 0.05], [0.9, 0.4]]), null)
    # test 0: 0.25 is beaten by 0.3 once -> 2/4; 0.05 by all 3 -> 4/4. test 1: 0.9 reached once -> 2/4; 0.4 twice -> 3/4
    assert p.tolist() == [[0.5, 1.0], [0.5, 0.75]]


def test_weighted_aurocs_are_the_resamples_aurocs():
    """AUROC and AP under bootstrap counts equal scikit-learn's of the resample itself (ties included)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import average_precision_score
    from rotelab.measures.memorization import auroc, bootstrap_counts, weighted_aurocs, weighted_average_precisions
    rng = np.random.default_rng(1)
    s, y = np.round(rng.normal(size=300), 1), rng.random(300) < 0.3
    w = bootstrap_counts(300, 40, rng)
    want = [roc_auc_score(np.repeat(y, r), np.repeat(s, r)) for r in w]
    assert np.allclose(weighted_aurocs(s, y, w), want, atol=1e-12)
    want = [average_precision_score(np.repeat(y, r), np.repeat(s, r)) for r in w]
    assert np.allclose(weighted_average_precisions(s, y, w), want, atol=1e-12)
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_paired_auroc_difference():
    from rotelab.measures.memorization import paired_auroc_difference
    rng = np.random.default_rng(0)
    ys = [rng.random(400) < 0.2 for _ in range(3)]
    good = [y + rng.normal(scale=0.5, size=400) for y in ys]
    noise = [rng.normal(size=400) for _ in ys]
    d = paired_auroc_difference(good, noise, ys, n_boot=300)
    assert d["lo"] > 0.3 and d["n_draws"] == 3 and len(d["per_draw"]) == 3 and min(d["per_draw"]) > 0.3
    same = paired_auroc_difference(good, good, ys, n_boot=100)
    assert same["difference"] == same["lo"] == same["hi"] == 0.0   # paired: the same resample for both
