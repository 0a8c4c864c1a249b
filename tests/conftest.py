import os
import tempfile
from pathlib import Path

# One torch thread per test process (and per subprocess a test starts): the suite's processes never
# oversubscribe the cores, so it stays fast beside other CPU-bound work (a sweep, a second test run).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from rotelab.config import FitConfig  # noqa: E402
from rotelab.engine import Hook  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VAR_U = REPO.parent / "shared" / "data" / "var_u.mat"

os.environ.setdefault("MPLBACKEND", "Agg")
if VAR_U.is_file():   # studies find the 12-bit task where a user keeps data: $ROTELAB_DATA
    os.environ.setdefault("ROTELAB_DATA", str(VAR_U.parent))
# generated data sets are cached for the session (and its sweep workers), not in the user's cache
os.environ.setdefault("ROTELAB_CACHE", tempfile.mkdtemp(prefix="rotelab-test-cache-"))


@pytest.fixture
def small_cfg():
    """A fast config on digits; tests override what they study."""
    def make(**kw):
        base = dict(dataset="digits", epochs=5, lr=0.1, batch_size=128, progress=False, hist_every=0,
                    checkpoint_every=0)
        base.update(kw)
        return FitConfig(**base)
    return make


class Crash(Hook):
    """Simulates a kill at the end of epoch `at` (after the hooks before it have run)."""

    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, loop, result):
        if result.epoch == self.at:
            raise RuntimeError("simulated crash")


def strip_times(records):
    """Metrics without the wall-clock fields, which differ between equal runs."""
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in records]
