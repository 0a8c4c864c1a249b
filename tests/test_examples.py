import numpy as np
import pytest

from rotelab.measures.examples import consecutive_overlap, overlap, pack, unpack


def test_pack_round_trip_odd_sizes():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 1001):
        c = rng.random((3, n)) < 0.5
        p = pack(c)
        assert p.dtype == np.uint8 and p.shape == (3, (n + 7) // 8)
        assert np.array_equal(unpack(p, n), c)


def test_overlap_on_a_hand_made_matrix():
    c = np.array([[1, 1, 0, 0],
                  [1, 0, 1, 0],
                  [1, 0, 1, 1]], dtype=bool)
    inter, union = consecutive_overlap(c)
    assert inter.tolist() == [0.25, 0.5]
    assert union.tolist() == [0.75, 0.75]
    assert [overlap(c[t - 1], c[t]) for t in (1, 2)] == [(0.25, 0.75), (0.5, 0.75)]


def test_intersection_below_accuracies_below_union():
    rng = np.random.default_rng(1)
    c = rng.random((50, 333)) < rng.random((50, 1))
    inter, union = consecutive_overlap(c)
    acc = c.mean(axis=1)
    assert np.all(inter <= np.minimum(acc[:-1], acc[1:]))
    assert np.all(np.maximum(acc[:-1], acc[1:]) <= union)
    # inclusion-exclusion: |A and B| + |A or B| = |A| + |B|
    assert np.allclose(inter + union, acc[:-1] + acc[1:])


def test_overlap_needs_a_matrix():
    with pytest.raises(ValueError, match="epochs x examples"):
        consecutive_overlap(np.ones(5, dtype=bool))


def test_per_example_until_an_epoch_is_the_run_stopped_there(tmp_path):
    """A run's per-example table read `until` epoch 2 equals that of the same run trained for 2 epochs."""
    import pandas as pd
    from rotelab.config import FitConfig
    from rotelab.protocols.fit import fit
    from rotelab.runs import Run
    from rotelab.store import StoreError
    base = dict(dataset="digits", widths=[16], lr=0.05, progress=False, hist_every=0, example_margins=True,
                corrupt="labels=0.2", subset=300)
    long = Run(fit(FitConfig(epochs=4, **base), tmp_path / "long").path)
    short = Run(fit(FitConfig(epochs=2, **base), tmp_path / "short").path)
    pd.testing.assert_frame_equal(long.per_example("train", until=2), short.per_example("train"))
    assert not long.per_example("train", until=4).equals(short.per_example("train"))
    with pytest.raises(StoreError, match="no evaluated epoch"):
        long.per_example("train", until=0)
