import os
from pathlib import Path

import pytest

from rotelab.config import FitConfig

REPO = Path(__file__).resolve().parents[1]
VAR_U = REPO.parent / "shared" / "data" / "var_u.mat"

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def small_cfg():
    """A fast config on digits; tests override what they study."""
    def make(**kw):
        base = dict(dataset="digits", epochs=5, lr=0.1, batch_size=128, progress=False, hist_every=0,
                    checkpoint_every=0)
        base.update(kw)
        return FitConfig(**base)
    return make
