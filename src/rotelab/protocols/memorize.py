"""`rotelab memorize`: which examples a network memorizes (Feldman & Zhang, NeurIPS 2020).

K models train on one training set (corrupted once, from --seed), each on its own random
class-balanced fraction r of it (model k: seed k, so its own subset, initialization and order), and
every model is evaluated on every training and test example. Each model is an ordinary run,
OUT/r-R_model-KKKK, trained in stacks of --stack models where the model allows; a killed folder
resumes at the next unfinished model or stack, and a sweep's Ray executor spreads the stacks. Once
all models are done:

    OUT/matrices.npz        the raw matrices, so that any estimate can be recomputed elsewhere:
                              fractions; per fraction r (keys prefixed r-R/): seen (K, N) which
                              training examples each model trained on, train_correct (K, N) and
                              test_correct (K, M) which it got right at the end (bits, np.packbits
                              along the last axis), seeds (K); and train_labels_used,
                              train_labels_true, train_corrupted (N), test_labels (M)
    OUT/memorization.npz    the estimates: mem, mem_se, mem_lo, mem_hi, n_in, n_out (N) at the first
                              fraction; cscore_R, cscore_R_se per fraction; infl_index, infl_value
                              (M, top_k): the train examples of largest influence on each test example
    OUT/memorization.json   what they say: the fit, the errors, mem of corrupted and clean examples,
                              and how well mem ranks the corrupted first (AUROC, AP with intervals)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, FitConfig, opt
from ..measures.examples import unpack
from ..plan import Plan, PlannedRun, folder_record, make
from ..protocol import Folder, Protocol, StudyParts, register
from ..store import RunDir, atomic_write_bytes, atomic_write_json, read_json, stored_file
from ..training import build_fit_loop


@dataclass
class MemorizeConfig(FitConfig):
    """A fit config, plus how many models train on which fraction of the training set."""
    models: int = opt(16, "models per fraction (K); model k has seed k (its subset, initialization and order)", ge=2)
    train_fraction: float | None = opt(0.7, "fraction r of the training set each model trains on (mem and influence)", gt=0, lt=1)
    cscore_fractions: list[float] = opt([], "further fractions for the C-score, K models each, comma-separated (e.g. 0.3,0.5)", flag_type="floats")
    stack: int = opt(16, "models trained together as one stack (1: one by one, for models that cannot be stacked)", ge=1)
    top_k: int = opt(100, "influence: the train examples of largest influence kept per test example", ge=1)
    influence_perms: int = opt(100, "influence: permutations of the null (which model trained on which subset shuffled); a pair is shown only where its influence beats its test example's null maximum (p <= 0.05)", ge=1)
    signals: bool = opt(True, "also train one model on the whole training set (AUM, data map, forgetting events) and --folds models for cleanlab's out-of-fold probabilities, and score every signal against the corruption")
    folds: int = opt(5, "cross-validation folds of the cleanlab baseline", ge=2)
    full_runs: int = opt(1, "runs on every example (seeds 0, 1, ...): the single-run signals are the first's; a study can average them over all, to compare at equal compute", ge=1)
    eval_every: int = opt(0, "subset and fold models: evaluate every N epochs and at the last (0: the last only, all their estimates need); the run on every example evaluates every epoch (its signals are per epoch)", ge=0)
    role: str = opt("folder", "(set by the plan) what a run is: the folder's config, a subset model, the whole-set run or a fold run",
                    ("folder", "model", "full", "fold"))

    def validate(self) -> "MemorizeConfig":
        FitConfig.validate(self)
        if self.role in ("full", "fold"):   # the single-run signals' run, a fold of the cleanlab baseline
            return self
        if self.train_fraction is None:
            raise ConfigError("--train-fraction", "memorize needs the fraction each model trains on, e.g. 0.7")
        bad = [r for r in self.cscore_fractions if not 0 < r < 1]
        if bad:
            raise ConfigError("--cscore-fractions", f"fractions lie strictly between 0 and 1, got {bad[0]}")
        if self.stack > 1:
            from ..vectorized import check_vectorizable
            try:
                check_vectorizable([self])
            except ConfigError as e:
                reason = str(e).split(": ", 1)[-1]
                raise ConfigError("--stack", f"these models cannot be trained as a stack ({reason}); "
                                             "use --stack 1") from None
        return self

    @property
    def fractions(self) -> list[float]:
        mem = [] if self.train_fraction is None else [self.train_fraction]
        return list(dict.fromkeys([*mem, *self.cscore_fractions]))


def data_seed(cfg: MemorizeConfig) -> int:
    """The seed of the folder's one corrupted data set, shared by all its runs."""
    return cfg.seed if cfg.data_seed is None else cfg.data_seed


def model_config(cfg: MemorizeConfig, fraction: float, k: int) -> MemorizeConfig:
    """Model k of a fraction: the folder's data (data_seed), its own seed."""
    return dataclasses.replace(cfg, seed=k, data_seed=data_seed(cfg), train_fraction=fraction, role="model")


def model_dir(fraction: float, k: int) -> str:
    return f"r-{fraction:g}_model-{k:04d}"


def signal_configs(cfg: MemorizeConfig) -> dict[str, MemorizeConfig]:
    """The runs behind the single-run signals and the cleanlab baseline: `full` trains on every
    example (margins and probabilities recorded; `full-K`, K >= 1, the same from seed K), `fold-F` on
    all but fold F."""
    base = dataclasses.replace(cfg, data_seed=data_seed(cfg), train_fraction=None, seed=0)
    out = {"full": dataclasses.replace(base, example_margins=True, eval_every=1, role="full")}
    for k in range(1, cfg.full_runs):
        out[f"full-{k}"] = dataclasses.replace(out["full"], seed=k)
    for f in range(cfg.folds):
        out[f"fold-{f}"] = dataclasses.replace(base, seed=f, heldout_fold=f"{f}/{cfg.folds}", role="fold")
    return out


def plan(cfg: MemorizeConfig, out: Path) -> Plan:
    out = Path(out)
    runs = [PlannedRun("memorize", out / model_dir(r, k), model_config(cfg, r, k),
                       stack=f"r-{r:g}/{k // cfg.stack}" if cfg.stack > 1 else None)
            for r in cfg.fractions for k in range(cfg.models)]
    if cfg.signals:
        runs += [PlannedRun("memorize", out / name, c) for name, c in signal_configs(cfg).items()]
    return Plan("memorize", out, runs, record=folder_record("memorize", cfg), finish=estimate)


def build_loop(cfg: MemorizeConfig, run: RunDir, state: dict | None = None):
    return build_fit_loop(cfg, run, state)


def memorize(cfg: MemorizeConfig, out, overwrite: bool = False) -> list[RunDir]:
    return make("memorize", cfg, out, overwrite)


# -- from the runs to the matrices and the estimates ----------------------------------------------

def _last_bits(ex: dict, split: str) -> np.ndarray:
    return unpack(ex[f"{split}_correct"][-1], int(ex[f"n_{split}"]))


def collect(out) -> dict:
    """The raw matrices of a finished folder, from its runs' examples.npz (bits unpacked)."""
    out = Path(out)
    cfg = MemorizeConfig.from_dict(read_json(out / "plan.json")["config"])
    mats: dict = {"fractions": np.array(cfg.fractions)}
    for r in cfg.fractions:
        seen, train, test, seeds = [], [], [], []
        for d in [out / model_dir(r, k) for k in range(cfg.models)]:
            ex = RunDir(d).read_examples()
            seen.append(ex["train_seen"])
            train.append(_last_bits(ex, "train"))
            test.append(_last_bits(ex, "test"))
            seeds.append(RunDir(d).read_config()["seed"])
        mats.update({f"r-{r:g}/seen": np.array(seen), f"r-{r:g}/train_correct": np.array(train),
                     f"r-{r:g}/test_correct": np.array(test), f"r-{r:g}/seeds": np.array(seeds)})
    mats.update(train_labels_used=ex["train_labels_used"], train_labels_true=ex["train_labels_true"],
                train_corrupted=ex["train_corrupted"], test_labels=ex["test_labels_used"])
    return mats


def _npz(path: Path, arrays: dict):
    import io
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


BIT_MATRICES = ("seen", "train_correct", "test_correct")


def read_matrices(out) -> dict:
    """OUT/matrices.npz with its bit matrices unpacked to booleans."""
    with np.load(Path(out) / "matrices.npz") as z:
        mats = {k: z[k] for k in z.files}
    n, m = len(mats["train_labels_used"]), len(mats["test_labels"])
    for key in list(mats):
        name = key.rsplit("/", 1)[-1]
        if name in BIT_MATRICES:
            mats[key] = unpack(mats[key], m if name == "test_correct" else n)
    return mats


def estimate(out) -> dict:
    """Write matrices.npz, memorization.npz and memorization.json for a folder whose models are done."""
    from ..measures.memorization import cscore, detection, influence, memorization
    out = Path(out)
    if (out / "memorization.json").is_file():   # written once every model was done: final (a published
        return read_json(out / "memorization.json")   # record, which has no checkpoints, is read as it is)
    cfg = MemorizeConfig.from_dict(read_json(out / "plan.json")["config"])
    mats = collect(out)
    _npz(out / "matrices.npz", {k: (np.packbits(v, axis=-1) if k.rsplit("/", 1)[-1] in BIT_MATRICES else v)
                                for k, v in mats.items()})
    r0 = f"r-{cfg.fractions[0]:g}"
    seen, train = mats[f"{r0}/seen"], mats[f"{r0}/train_correct"]
    mem = memorization(seen, train)
    est = {"mem": mem.value, "mem_se": mem.se, "mem_lo": mem.lo, "mem_hi": mem.hi,
           "n_in": mem.n_in, "n_out": mem.n_out}
    for r in cfg.fractions:
        c = cscore(mats[f"r-{r:g}/seen"], mats[f"r-{r:g}/train_correct"])
        est[f"cscore_{r:g}"], est[f"cscore_{r:g}_se"] = c.value, c.se
    idx, val = influence(seen, mats[f"{r0}/test_correct"], top=min(cfg.top_k, seen.shape[1]))
    infl_p, influence_summary = influence_significance(seen, mats[f"{r0}/test_correct"], val, cfg.influence_perms)
    shown_above = influence_summary["shown_above"]
    est.update(infl_index=idx.astype(np.int32), infl_value=val.astype(np.float32), infl_p=infl_p.astype(np.float32))
    _npz(out / "memorization.npz", est)
    corrupted = mats["train_corrupted"].astype(bool)
    fit = [RunDir(out / model_dir(cfg.fractions[0], k)).read_status().get("final", {}).get("train_acc_seen")
           for k in range(cfg.models)]
    summary = {
        "models": int(seen.shape[0]), "fraction": cfg.fractions[0], "n_train": int(seen.shape[1]),
        "n_test": int(mats[f"{r0}/test_correct"].shape[1]), "corrupted": int(corrupted.sum()),
        "fit_seen_mean": float(np.mean([f for f in fit if f is not None])) if any(f is not None for f in fit) else None,
        "mem_se_p95": float(np.nanquantile(mem.se, 0.95)),
        "mem_undefined": int(np.isnan(mem.value).sum()),
        "mem_corrupted_mean": float(np.nanmean(mem.value[corrupted])) if corrupted.any() else None,
        "mem_clean_median": float(np.nanmedian(mem.value[~corrupted])) if (~corrupted).any() else None,
        "mem_clean_mean": float(np.nanmean(mem.value[~corrupted])) if (~corrupted).any() else None,
    }
    summary["influence"] = influence_summary
    if corrupted.any() and (~corrupted).any():
        summary["detection_mem"] = detection(mem.value, corrupted)
    write_gallery(out, cfg, mem.value, mats, idx, val, infl_p, shown_above, tiebreak=mem.lo)
    if cfg.signals:
        table = per_example(out, cfg, est, mats)
        buf = table.to_csv(index=False).encode()
        atomic_write_bytes(out / "per_example.csv", buf)
        if corrupted.any() and (~corrupted).any():
            summary["signals"] = score_signals(out, cfg, table)
    atomic_write_json(out / "memorization.json", summary)
    return summary


def influence_significance(seen, test_correct, values, perms: int, level: float = 0.05,
                           threshold: float = 0.15) -> tuple[np.ndarray, dict]:
    """What the permutation null (influence_null) says of the estimated influences `values` (M, top):
    each kept pair's p-value against its test example's null maximum, and `shown_above`: the
    (1 - level) quantile of the null's largest influence over all pairs, which a pair must exceed to be
    shown (the chance of showing any pair that chance alone made is then at most `level`). With them:
    how many test examples' top pairs pass their own null (and how many would by chance: level x M),
    how many pairs exceed `threshold` against the null's mean count, and about how many models an
    influence level needs to clear the shown threshold (which falls as 1/sqrt(K): K x (shown_above /
    level)^2, an approximation)."""
    from ..measures.memorization import influence_null, pair_pvalues, pairs_above
    null = influence_null(seen, test_correct, n_perm=perms, threshold=threshold)
    p = pair_pvalues(values, null["max"])
    k = int(np.asarray(seen).shape[0])
    shown_above = float(np.quantile(null["max"].max(axis=1), 1 - level))
    top1 = np.asarray(values)[:, 0]
    summary = {
        "perms": perms, "level": level, "interval": "permutation null over which model trained on which subset",
        "median_null_max": float(np.median(null["max"])),
        "shown_above": shown_above, "pairs_shown": int((top1 > shown_above).sum()),
        "top1_pass_own_null": int((p[:, 0] <= level).sum()), "test_examples": int(len(top1)),
        "top1_pass_own_null_by_chance": round(level * len(top1), 1),
        f"pairs_above_{threshold:g}": pairs_above(seen, test_correct, threshold),
        f"null_pairs_above_{threshold:g}_mean": float(null["above"].mean()),
        "models": k,
        "models_needed": {f"{lv:g}": int(np.ceil(k * (shown_above / lv) ** 2)) for lv in (0.15, 0.25, 0.5)},
    }
    return p, summary


def add_influence_null(out, perms: int = 100) -> dict:
    """The permutation null for a finished folder made before estimate() had one (a published record
    included: it keeps matrices.npz, memorization.npz and its run on every example): each top pair's
    p-value, the summary in memorization.json ("influence") and the gallery's pairs redrawn from those
    that pass. Returns the summary."""
    from ..measures.memorization import influence
    out = Path(out)
    mats = read_matrices(out)
    saved = read_json(out / "full" / "config.json")
    cfg = MemorizeConfig.from_dict({k: v for k, v in saved.items() if k not in ("environment", "protocol", "data")})
    cfg = dataclasses.replace(cfg, role="folder", train_fraction=float(mats["fractions"][0]), seed=0,
                              data_seed=saved.get("data_seed"))
    r0 = f"r-{cfg.fractions[0]:g}"
    seen, test = mats[f"{r0}/seen"], mats[f"{r0}/test_correct"]
    idx, val = influence(seen, test, top=min(cfg.top_k, seen.shape[1]))
    p, summary = influence_significance(seen, test, val, perms)
    with np.load(out / "memorization.npz") as z:
        mem, mem_lo = z["mem"], z["mem_lo"]
    write_gallery(out, cfg, mem, mats, idx, val, p, summary["shown_above"], tiebreak=mem_lo)
    result = read_json(out / "memorization.json")
    result["influence"] = summary
    atomic_write_json(out / "memorization.json", result)
    return summary


def images_of(x) -> np.ndarray | None:
    """Inputs as (N, H, W) or (N, H, W, 3) images for a gallery; None where they are not images."""
    x = x.cpu().numpy()
    if x.ndim == 4:
        return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)
    side = int(round(x.shape[1] ** 0.5))
    return x.reshape(-1, side, side) if x.ndim == 2 and side * side == x.shape[1] and side >= 8 else None


def write_gallery(out: Path, cfg: MemorizeConfig, mem: np.ndarray, mats: dict, infl_index, infl_value,
                  infl_p=None, shown_above: float | None = None, tiebreak=None, per_class: int = 8, pairs: int = 12):
    """OUT/gallery.npz: the images Feldman & Zhang show, kept so that figures need no data loading:
    per class the most memorized clean examples (`class_images` (classes, per_class, ...),
    `class_mem`, `class_index`), and the train-test pairs of highest influence among those above
    `shown_above` (influence_significance: what chance alone exceeds with probability 0.05; `pair_train`,
    `pair_test` images, `pair_value`, `pair_p`, `pair_train_index`, `pair_test_index`; none where none is)."""
    from ..data import load_data
    data = load_data(model_config(cfg, cfg.fractions[0], 0))
    train, test = images_of(data.train.x), images_of(data.test.x)
    if train is None or test is None:
        return
    clean = ~mats["train_corrupted"].astype(bool)
    labels = mats["train_labels_used"]
    score = np.where(np.isnan(mem) | ~clean, -np.inf, mem)
    classes = sorted(set(labels.tolist()))
    # many examples tie at mem 1.00 (176 clean ones in the memorization study; their C-score is then 0
    # too): among ties, the most surely memorized first, by the lower end of mem's 95% interval (more
    # models on each side: a higher one); index order without it
    second = -np.nan_to_num(np.asarray(tiebreak, dtype=np.float64), nan=-np.inf) if tiebreak is not None \
        else np.zeros(len(mem))
    chosen = [np.lexsort((second, -np.where(labels == c, score, -np.inf)))[:per_class] for c in classes]
    top1 = np.nan_to_num(infl_value[:, 0].astype(np.float64), nan=-np.inf)
    if shown_above is not None:   # only pairs that stand out from what K models give by chance
        top1 = np.where(top1 > shown_above, top1, -np.inf)
    flat = np.argsort(-top1, kind="stable")[:pairs]
    flat = flat[np.isfinite(top1[flat])]
    tr = infl_index[flat, 0]
    _npz(out / "gallery.npz", {
        "class_images": np.stack([train[c] for c in chosen]).astype(np.float16),
        "class_mem": np.stack([mem[c] for c in chosen]), "class_index": np.stack(chosen), "classes": np.array(classes),
        "pair_train": train[tr].astype(np.float16), "pair_test": test[flat].astype(np.float16),
        "pair_value": infl_value[flat, 0].astype(np.float32), "pair_train_index": tr, "pair_test_index": flat,
        "pair_p": (infl_p[flat, 0] if infl_p is not None else np.full(len(flat), np.nan)).astype(np.float32),
        "pair_train_label": labels[tr], "pair_test_label": mats["test_labels"][flat]})


def _seconds(paths) -> float:
    """Training and evaluation seconds of runs, from their metrics."""
    return float(sum(m.get("seconds", 0.0) for p in paths for m in RunDir(p).read_metrics()))


def oof_probabilities(out: Path, cfg: MemorizeConfig) -> np.ndarray:
    """Out-of-fold predicted probabilities (N, classes) of the training examples: each from the fold
    run that held it out (its final weights), as cleanlab expects them."""
    import torch
    probs: np.ndarray | None = None
    for f in range(cfg.folds):
        run = RunDir(out / f"fold-{f}")
        loop = build_loop(MemorizeConfig.from_dict(run.read_config()), run, run.load_checkpoint())
        held = ~run.read_examples()["train_seen"].astype(bool)
        x = loop.splits["train"].x[torch.as_tensor(held)]
        model = loop.model.eval()
        with torch.no_grad():
            p = torch.cat([torch.softmax(model(x[i:i + 2048]).float(), dim=1) for i in range(0, len(x), 2048)])
        filled = np.full((len(held), p.shape[1]), np.nan) if probs is None else probs
        filled[held] = p.cpu().numpy()
        probs = filled
    assert probs is not None, "memorize runs at least 2 folds"
    return probs


RAMP = "noise-ramp"   # OUT/noise-ramp/full: the whole-set run under rising weight noise


def ramp_config(cfg: MemorizeConfig):
    """The noise ramp behind breaking alpha: the whole-set run frozen, alpha from 1e-3 times 1.5 every
    epoch (20 levels, to 2.2), 4 noisy passes a level."""
    from .noise import NoiseConfig
    return NoiseConfig(alpha_start=1e-3, alpha_factor=1.5, every=1, steps=20, noise_samples=4, seed=0,
                       device=cfg.device, checkpoint_every=cfg.checkpoint_every, progress=False)


def breaking_alpha(out: Path, cfg: MemorizeConfig) -> np.ndarray:
    """Per training example, the alpha at which the whole-set run gets it wrong under the ramp
    (the ramp's noise_fate table: NaN where it was wrong from the first level, inf where it never broke); the ramp
    runs here, once (a derived run: it needs the whole-set run's final weights)."""
    from ..plan import execute, plan as plan_of
    from ..runs import Run
    p = plan_of("noise", ramp_config(cfg), out / RAMP, sources=[out / "full"])
    execute([p])   # nothing to do when it is done
    return Run(p.runs[0].path).table("noise_fate", split="train")["breaking_alpha"].to_numpy()


def per_example(out: Path, cfg: MemorizeConfig, est: dict, mats: dict):
    """One row per training example: labels, corruption, the whole-set run's signals (Run.per_example)
    and its breaking alpha under weight noise, the subset estimates (mem with its interval, C-scores)
    and cleanlab's label quality from the folds' out-of-fold probabilities."""
    from cleanlab.rank import get_label_quality_scores
    from ..runs import Run
    table = Run(out / "full").per_example("train")
    table["breaking_alpha"] = breaking_alpha(out, cfg)
    for key, value in est.items():
        if np.ndim(value) == 1 and len(value) == len(table):
            table[key] = value
    table["cleanlab_quality"] = get_label_quality_scores(mats["train_labels_used"], oof_probabilities(out, cfg))
    return table


def signal_scores(cfg: MemorizeConfig, table) -> dict[str, tuple[np.ndarray, str]]:
    """Each signal as a score that is high for the suspect examples, with the runs it needs."""
    r0 = cfg.fractions[0]
    scores = {"mem": (table["mem"].to_numpy(), f"{cfg.models} subset models at r = {r0:g}")}
    for r in cfg.fractions:
        scores[f"cscore_{r:g} (low)"] = (-table[f"cscore_{r:g}"].to_numpy(), f"{cfg.models} subset models at r = {r:g}")
    one = "one run on every example"
    scores.update({"aum (low)": (-table["aum"].to_numpy(), one),
                   "confidence (low)": (-table["confidence"].to_numpy(), one),
                   "final probability (low)": (-table["prob_final"].to_numpy(), one),
                   "forgetting events": (table["forgetting_events"].to_numpy(dtype=float), one),
                   "learned at": (table["learned_at"].to_numpy(dtype=float), one),
                   "cleanlab (low quality)": (-table["cleanlab_quality"].to_numpy(), f"{cfg.folds} fold runs")})
    if "breaking_alpha" in table:   # wrong before any noise: alpha 0; never broke: past the last level
        alpha = table["breaking_alpha"].to_numpy(dtype=float)
        top = np.nanmax(np.where(np.isinf(alpha), np.nan, alpha), initial=1.0) * 2
        scores["breaking alpha (low)"] = (-np.nan_to_num(alpha, nan=0.0, posinf=top), f"{one} and its noise ramp")
    return scores


def score_signals(out: Path, cfg: MemorizeConfig, table) -> list[dict]:
    """AUROC and average precision of every signal ranking the corrupted examples first (percentile
    bootstrap intervals over examples), with the training seconds of the runs each needed."""
    from ..measures.memorization import detection
    seconds = {f"{cfg.models} subset models at r = {r:g}": _seconds(out / model_dir(r, k) for k in range(cfg.models))
               for r in cfg.fractions}
    seconds["one run on every example"] = _seconds([out / "full"])
    seconds["one run on every example and its noise ramp"] = _seconds([out / "full", out / RAMP / "full"])
    seconds[f"{cfg.folds} fold runs"] = _seconds(out / f"fold-{f}" for f in range(cfg.folds))
    rows = []
    for name, (score, runs) in signal_scores(cfg, table).items():
        d = detection(score, table["corrupted"].to_numpy(), n_boot=500)
        rows.append({"signal": name, "runs": runs, "seconds": round(seconds[runs], 1), **d})
    return rows


def read_estimates(out):
    """Per training example: the estimates with its labels and whether it was corrupted (a DataFrame)."""
    import pandas as pd
    out = Path(out)
    with np.load(out / "memorization.npz") as z:
        est = {k: z[k] for k in z.files if z[k].ndim == 1}
    mats = read_matrices(out)
    return pd.DataFrame({"example": np.arange(len(mats["train_labels_used"])),
                         "label_used": mats["train_labels_used"], "label_true": mats["train_labels_true"],
                         "corrupted": mats["train_corrupted"].astype(bool), **est})


def folder_table(out):
    """A finished folder's per-example table: per_example.csv (every signal), else the estimates."""
    import pandas as pd
    out = Path(out)
    if (path := stored_file(out / "per_example.csv")) is not None:
        return pd.read_csv(path)
    if (out / "memorization.npz").is_file():
        return read_estimates(out)
    raise ConfigError("runs", f"{out}: its models are not all done yet; run it again with --resume {out}")


def summary_lines(out) -> list[str]:
    path = Path(out) / "memorization.json"
    if not path.is_file():
        return [f"{out}: models not all done yet; run it again with --resume {out}"]
    s = read_json(path)
    lines = [f"{out}: {s['models']} models on {s['fraction']:g} of {s['n_train']} examples each"
             + (f", fitting {s['fit_seen_mean']:.3f} of what they saw" if s.get("fit_seen_mean") is not None else "")
             + f"; mem's standard error at most {s['mem_se_p95']:.3f} for 95% of the examples"]
    if s.get("mem_corrupted_mean") is not None:
        d = s["detection_mem"]
        lines.append(f"mem: corrupted mean {s['mem_corrupted_mean']:.3f}, clean median {s['mem_clean_median']:.3f}; "
                     f"ranks the {s['corrupted']} corrupted first with AUROC {d['auroc']:.3f} "
                     f"({d['auroc_ci'][0]:.3f}-{d['auroc_ci'][1]:.3f}, {d['interval']})")
    return lines


def group_figures(paths) -> list[Path]:
    """Per finished folder: the memorization histogram; with the signals, their ROC curves and the data map."""
    import pandas as pd
    from ..plots import plot_data_map, plot_memorization, plot_signal_rocs
    out = []
    for p in map(Path, paths):
        if not (p / "memorization.npz").is_file():
            continue
        out.append(plot_memorization(p, read_estimates(p)))
        if (p / "gallery.npz").is_file():
            from ..plots import plot_influence_pairs, plot_memorized_by_class
            with np.load(p / "gallery.npz") as z:
                g = {k: z[k] for k in z.files}
            out += [plot_memorized_by_class(p, g), plot_influence_pairs(p, g)]
        if (path := stored_file(p / "per_example.csv")) is not None:
            table = pd.read_csv(path)
            cfg = MemorizeConfig.from_dict(read_json(p / "plan.json")["config"])
            if table["corrupted"].any():
                out.append(plot_signal_rocs(p, table["corrupted"].to_numpy(), signal_scores(cfg, table)))
            out.append(plot_data_map(p, table))
    return out


def example(tmp) -> tuple[dict, list]:
    return dict(dataset="digits", widths=[32], epochs=12, lr=0.05, corrupt="labels=0.2", label_noise_mode="other",
                models=4, stack=1, train_fraction=0.5, signals=False, hist_every=0, checkpoint_every=0,
                progress=False), []


PROTOCOL = register(Protocol(
    name="memorize", config=MemorizeConfig, plan=plan, build_loop=build_loop, example=example,
    help="many models on random subsets: which examples each memorizes (Feldman & Zhang)",
    description="Train --models models, each on a random --train-fraction of one training set (corrupted once), "
                "evaluate each on every example, and estimate memorization, influence and the C-score "
                "(Feldman & Zhang 2020; Jiang et al. 2021); OUT/memorization.json says how well memorization "
                "finds the corrupted labels.",
    folder=Folder(figures=group_figures, summary_lines=summary_lines, per_example=folder_table),
    study=StudyParts(module="rotelab.protocols.memorize_study")))
