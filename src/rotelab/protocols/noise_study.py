"""What the noise-ramp study draws and checks from noise ramps: the ramps' curves, whether random-label
nets break first (between grid levels), the information term's arithmetic, whether corrupted examples
break before clean ones, and random-label nets at chance. Part of noise's StudyParts (read by name:
noise does not import it); imports no torch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..protocol import CheckFn, CheckResult, FigureFn
from ..store import RunDir
from .noise import breaking_summary, group_figures, noise_fate, source_label_corruption, source_of, summarize


def fig_noise_ramp(ctx, step: str) -> list[Path]:
    return [ctx.copy(p, ctx.figures / f"noise_ramp_{step}.png") for p in group_figures([ctx.step_dir(step)])]


def _ramps(ctx, step: str) -> list[dict]:
    return [summarize(r) for r in ctx.runs(step)]


def check_random_breaks_first(ctx, step: str, max_factor: float | None = None, source: str = "rotelab threshold"):
    """Every random-label net's train accuracy halves at a lower alpha than every true-label net's, judged
    on where each crosses half (log-linear between grid levels). With `max_factor`, only on a ramp whose
    alpha grows by at most that factor per step (how many distinct grid alphas each kind took is
    reported: seeds that break within one step tie on the grid)."""
    rows = _ramps(ctx, step)
    alpha = lambda r: r["half_acc"]["alpha"] if r["half_acc"] else math.inf  # noqa: E731
    rand = [alpha(r) for r in rows if r["label_corruption"] == 1.0]
    true = [alpha(r) for r in rows if r["label_corruption"] == 0.0]
    if not rand or not true:
        return "needs true- and random-label runs", "", False
    grid = sorted({r["alpha"] for r in ctx.runs(step)[0].read_metrics() if r.get("alpha")})
    factor = max((b / a for a, b in zip(grid, grid[1:])), default=math.inf)
    fine = max_factor is None or factor <= max_factor * (1 + 1e-9)
    # between grid points: where each network's accuracy crosses half (log-linear), so seeds that
    # break within one step are ordered too
    cross = lambda r: r.get("half_alpha") or math.inf  # noqa: E731
    rand_x = sorted(cross(r) for r in rows if r["label_corruption"] == 1.0)
    true_x = sorted(cross(r) for r in rows if r["label_corruption"] == 0.0)
    expected = "every random-label net's crossing below every true-label net's" + \
        (f", on a grid of factor <= {max_factor:.4g} per step ({source})" if max_factor else f" ({source})")
    return CheckResult(f"first grid alpha below half: random labels {', '.join(f'{a:.3g}' for a in sorted(rand))} "
                       f"({len(set(rand))} distinct), true labels {', '.join(f'{a:.3g}' for a in sorted(true))} "
                       f"({len(set(true))} distinct), grid factor {factor:.4g} per step; crossing of half (log-linear "
                       f"between levels): random labels {', '.join(f'{a:.3g}' for a in rand_x)}, true labels "
                       f"{', '.join(f'{a:.3g}' for a in true_x)}", expected, fine and max(rand_x) < min(true_x),
                       {"half_crossing_random": rand_x, "half_crossing_true": true_x, "grid_factor": factor,
                        "grid_below_half_random": sorted(rand), "grid_below_half_true": sorted(true)})


def check_information_terms(ctx, step: str, start: float = 4.605, per_doubling: float = 0.347,
                            tolerance: float = 0.001):
    run = ctx.runs(step)[0]
    m = [r for r in run.read_metrics() if r["epoch"] > 0]
    by_alpha = {}
    for r in m:
        by_alpha.setdefault(r["alpha"], r["neg_half_log_alpha"])
    alphas = sorted(by_alpha)
    first = by_alpha[alphas[0]]
    steps = [by_alpha[a] - by_alpha[b] for a, b in zip(alphas, alphas[1:])]
    drop = float(np.mean(steps)) if steps else float("nan")
    ok = abs(first - start) <= tolerance and all(abs(s - per_doubling) <= tolerance for s in steps)
    # reported, never judged: the information term of a fixed alpha schedule is its arithmetic
    return CheckResult(f"starts at {first:.4f} nats, falls {drop:.4f} per step ({'as' if ok else 'not as'} the closed form)",
                       f"reported ({start} nats, {per_doubling} per doubling by construction)", None,
                       {"start_nats": first, "fall_per_step": drop, "as_closed_form": ok})


def check_corrupted_break_first(ctx, step: str, p: float = 0.5, networks: int = 3, level: float = 0.05,
                                source: str = "rotelab threshold"):
    """In every ramp of a network trained with label corruption p (at least `networks` of them), the
    examples whose labels were corrupted break at a lower median alpha than the clean ones, and a
    two-sided Mann-Whitney U test of their breaking alphas gives p < `level`. Breaking: first wrong in
    the majority of the noisy passes, among examples right at the first noise level."""
    from ..runs import Run
    parts, ok, numbers = [], True, {}
    ramps = [r for r in ctx.runs(step) if source_label_corruption(source_of(r.path, r.read_config()["source"])) == p]
    for r in ramps:
        s = breaking_summary(noise_fate(Run(r.path)))
        numbers[r.path.name] = s
        clean, bad = s["clean"]["median_breaking_alpha"], s["corrupted"]["median_breaking_alpha"]
        pval = s.get("mann_whitney_p", float("nan"))
        ok &= clean is not None and bad is not None and bad < clean and pval < level
        effect = s.get("prob_corrupted_first", float("nan"))
        within = "; ".join(f"{g} {s[g]['spearman_forgetting_events']:+.2f}" for g in ("clean", "corrupted")
                           if "spearman_forgetting_events" in s.get(g, {}))
        parts.append(f"{r.path.name}: median breaking alpha {bad:.3g} corrupted ({s['corrupted']['examples']}) vs "
                     f"{clean:.3g} clean ({s['clean']['examples']}); P(a corrupted example breaks first) {effect:.2f}, "
                     f"Mann-Whitney p {'< 1e-12' if pval < 1e-12 else f'= {pval:.2g}'}"
                     + (f"; Spearman with forgetting events within groups: {within}" if within else ""))
    return CheckResult("; ".join(parts) or f"no ramps of networks trained at p = {p}",
                       f"corrupted below clean with p < {level} in each of >= {networks} networks ({source})",
                       ok and len(ramps) >= networks, numbers)


def check_random_test_chance(ctx, step: str, tolerance: float = 0.03):
    rows = [r for r in _ramps(ctx, step) if r["label_corruption"] == 1.0]
    chance = 1 / RunDir(rows[0]["source"]).num_classes()
    accs = [r["noise_free_test_acc"] for r in rows]
    return CheckResult(f"test accuracy {', '.join(f'{a:.3f}' for a in accs)}", f"{chance:.2f} +- {tolerance}",
                       all(abs(a - chance) <= tolerance for a in accs), {"test_acc": accs, "chance": chance})


FIGURES: dict[str, FigureFn] = {"noise_ramp": fig_noise_ramp}
CHECKS: dict[str, CheckFn] = {"random_breaks_first": check_random_breaks_first,
                              "information_terms": check_information_terms,
                              "random_test_chance": check_random_test_chance,
                              "corrupted_break_first": check_corrupted_break_first}
