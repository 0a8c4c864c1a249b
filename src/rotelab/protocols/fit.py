"""`rotelab fit`: train a network on data with corrupted labels or pixels (Zhang et al., ICLR 2017)."""

from __future__ import annotations

from pathlib import Path

from ..config import FitConfig
from ..plan import make, one_run
from ..protocol import Protocol, StudyParts, register
from . import fit_study   # what studies of fit runs draw and check
from ..store import RunDir
from ..training import build_fit_loop


def build_loop(cfg: FitConfig, run: RunDir, state: dict | None = None):
    return build_fit_loop(cfg, run, state)


def plan(cfg: FitConfig, out: Path):
    return one_run("fit", cfg, out)


def fit(cfg: FitConfig, out, overwrite: bool = False) -> RunDir:
    """Train from scratch into the run directory `out`."""
    return make("fit", cfg, out, overwrite)[0]


def example(tmp) -> tuple[dict, list]:
    """A run of a few seconds on scikit-learn's digits (the conformance tests run every protocol's)."""
    return dict(dataset="digits", widths=[64], epochs=40, lr=0.05, corrupt="labels=0.5", hist_every=0,
                checkpoint_every=0, progress=False), []


PROTOCOL = register(Protocol(
    name="fit", config=FitConfig, plan=plan, build_loop=build_loop, example=example, stackable=True,
    help="train on data with corrupted labels or pixels",
    description="Train a network on data whose labels or pixels are corrupted (Zhang et al. 2017).",
    study=StudyParts(figures=fit_study.FIGURES, checks=fit_study.CHECKS, report_section=fit_study.report_section)))
