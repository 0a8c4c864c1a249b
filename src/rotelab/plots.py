"""Figures from run directories (never from live objects): everything is recomputable from disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .store import RunDir, read_info, runs_in  # noqa: E402


def _series(metrics: list[dict], key: str):
    pts = [(m["epoch"], m[key]) for m in metrics if m.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _save(fig, run: RunDir, name: str) -> Path:
    return save_figure(fig, run.figures / f"{name}.png")


def plot_curves(run: RunDir) -> Path:
    """Loss and accuracy per epoch; train accuracy split into clean and corrupted examples."""
    m = run.read_metrics()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("train_loss", "-"), ("test_loss", "--")):
        ax_loss.plot(*_series(m, key), style, label=key.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_styles: list[tuple[str, Any]] = [("train_acc", "-"), ("test_acc", "--"), ("train_acc_clean", ":"),
                                            ("train_acc_corrupted", "-."), ("train_acc_true", (0, (1, 3)))]
    for key, style in acc_styles:
        x, y = _series(m, key)
        if x:
            ax_acc.plot(x, y, linestyle=style, label=key.replace("_", " "))
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    status = run.read_status()
    if status.get("fit_epoch"):
        ax_acc.axvline(status["fit_epoch"], color="grey", lw=0.8)
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(run.path.name)
    return _save(fig, run, "curves")


def plot_overlap(run: RunDir) -> Path:
    """Accuracy oscillation: intersection and union of the correct sets of consecutive epochs,
    between which each epoch's accuracy must lie."""
    m = run.read_metrics()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split in zip(axes, ("train", "test")):
        ax.plot(*_series(m, f"{split}_acc"), color="k", lw=1, label="accuracy")
        x_u, union = _series(m, f"{split}_union")
        x_i, inter = _series(m, f"{split}_intersection")
        if x_u:
            ax.fill_between(x_u, inter, union, alpha=0.3, label="between intersection and union")
            ax.plot(x_u, union, lw=0.8, label="union (t-1, t)")
            ax.plot(x_i, inter, lw=0.8, label="intersection (t-1, t)")
        ax.set(xlabel="epoch", title=f"{split}: correct sets of consecutive epochs", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction of examples")
    return _save(fig, run, "overlap")


def save_figure(fig, path: Path) -> Path:
    """Write a figure as PNG (creating its folder) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def model_args_of(cfg: dict) -> dict:
    """A saved config's model arguments in today's form (older configs spelled them as fields)."""
    from .spec import read_model_fields
    return read_model_fields(cfg).get("model_args", {})


def hidden_widths(cfg: dict) -> list[int] | None:
    """An MLP run's hidden widths (the tishby net's own), None for other models."""
    from .spec import TISHBY_WIDTHS
    model = cfg.get("model", "mlp")
    return list(TISHBY_WIDTHS) if model == "tishby" else model_args_of(cfg).get("widths") if model == "mlp" else None


def describe_network(cfg: dict) -> str:
    """A run's network and regularization in words, e.g. 'WRN-10-1 (batch norm), weight decay 0.005'."""
    model, args = cfg.get("model", "mlp"), model_args_of(cfg)
    if model == "wrn":
        net = f"WRN-{args.get('depth')}-{args.get('widen')} " + \
            ("(batch norm)" if args.get("batch_norm", True) else "(no batch norm)")
    elif model in ("mlp", "tishby"):
        net = "MLP " + "-".join(map(str, hidden_widths(cfg) or [])) + (" with batch norm" if args.get("batch_norm") else "")
    else:
        net = model
    wd = cfg.get("weight_decay") or 0
    return net + (f", weight decay {wd:g}" if wd else ", no weight decay")


def plot_forget(run: RunDir, summary: dict) -> Path:
    """Accuracy of the train part, the val part and the test set over both stages, with the stage
    boundary and the collapses the detector found (`summary`: stage1_end and collapses per split);
    below, the learning rate, and with --norms the effective learning rate lr / ||w||^2 and the
    weights' norm."""
    m = run.read_metrics()
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    colors = {"train": "C0", "val": "C1", "test": "C2"}
    for split in colors:
        x, y = _series(m, f"{split}_acc")
        ax.plot(x, y, color=colors[split], label=f"{split} accuracy")
        for e in summary["collapses"].get(split, []):
            ax.annotate("", xy=(e["lowest_epoch"], e["lowest"]), xytext=(e["epoch"], e["before"]),
                        arrowprops=dict(arrowstyle="->", color=colors[split], lw=1.2))
            ax.plot([e["lowest_epoch"]], [e["lowest"]], "v", color=colors[split], ms=9, mec="k", zorder=5)
            ax.axvspan(e["epoch"] - 0.5, e["lowest_epoch"] + 0.5, color=colors[split], alpha=0.15)
    stage2 = summary["stage1_end"] is not None and bool(m) and m[-1]["epoch"] > summary["stage1_end"]
    for a in (ax, ax_lr):
        if stage2:   # no boundary where the run ends with stage 1 (--epochs2 0)
            a.axvline(summary["stage1_end"] + 0.5, color="k", ls="--", lw=1,
                      label="stage 1 | stage 2" if a is ax else None)
        a.grid(alpha=0.3)
    if any(summary["collapses"].values()):
        ax.plot([], [], "v", color="grey", ms=9, mec="k", label="collapse: lowest point (shaded: its epochs)")
    ax.set(ylabel="accuracy", ylim=(0, 1.02), title=forget_title(run.read_config()))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax_lr.plot(*_series(m, "lr"), color="k", lw=1, label="learning rate")
    x, eff = _series(m, "eff_lr")
    if x:
        ax_lr.plot(x, eff, color="C3", lw=1.2, label="effective lr: lr / ||w||^2")
        x_si, eff_si = _series(m, "si_eff_lr")
        if x_si:
            ax_lr.plot(x_si, eff_si, color="C1", lw=1.2, label="over the scale-invariant weights")
        twin = ax_lr.twinx()
        twin.plot(*_series(m, "weight_norm"), color="C4", lw=1.2, ls="--", label="||w|| (right axis)")
        twin.set_ylabel("weight norm")
        twin.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.08, 0.62), frameon=False)
    ax_lr.set(xlabel="epoch", ylabel="learning rate", yscale="log")
    ax_lr.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.08, 1.0), frameon=False)
    return _save(fig, run, "forget")


def forget_title(cfg: dict) -> str:
    """A forget run's figure title: the network, what stage 1 trained on, and stage 2's lr and data
    (or that it had none: --epochs2 0)."""
    parts = f"train ({describe_corruption(cfg.get('corrupt'))}) + val ({describe_corruption(cfg.get('val_corrupt'))})"
    if cfg.get("epochs2") == 0:
        return f"{describe_network(cfg)}\nstage 1: {parts}; no stage 2"
    lr2 = cfg.get("lr2")
    stage2 = f"stage 2 at lr {lr2:g}" if lr2 is not None else "stage 2 at stage 1's last lr"
    on = "train + val" if cfg.get("stage2_on") == "train+val" else "train only"
    return f"{describe_network(cfg)}\nstage 1: {parts}; {stage2}, {on}"


def plot_example_dynamics(run: RunDir) -> list[Path]:
    """Histogram of forgetting events and the distribution of first-learned epochs, clean vs
    corrupted examples, for each trained split."""
    import numpy as np
    from .measures.examples import correctness, first_correct, forgetting_events, split_names
    ex = run.read_examples()
    splits = [s for s in split_names(ex) if s != "test"]
    fig, axes = plt.subplots(2, len(splits), figsize=(5.5 * len(splits), 7), squeeze=False)
    epochs = ex["epochs"]
    for j, split in enumerate(splits):
        c = correctness(ex, split)
        corrupted = ex[f"{split}_corrupted"].astype(bool)
        events, first = forgetting_events(c), first_correct(c)
        # never-learned examples in a bin of their own, right of the largest count (Toneva et al. rank
        # them as the most forgettable; they are not unforgettable)
        never = events.max() + 2
        shown = np.where(first >= 0, events, never)
        bins = np.arange(never + 2) - 0.5
        for name, mask, color in (("clean", ~corrupted, "C0"), ("corrupted", corrupted, "C3")):
            if mask.any():
                axes[0, j].hist(shown[mask], bins=bins, alpha=0.6, color=color, label=f"{name} ({mask.sum()})")
                learned = np.sort(epochs[first[mask & (first >= 0)]])
                axes[1, j].step(learned, np.arange(1, len(learned) + 1) / mask.sum(), where="post", color=color,
                                label=name)
        ticks = [t for t in axes[0, j].get_xticks() if 0 <= t < never - 1 and t == int(t)]
        axes[0, j].set_xticks(ticks + [never], [f"{t:g}" for t in ticks] + ["never\nlearned"])
        axes[0, j].set(xlabel="forgetting events (correct at t-1, wrong at t)", ylabel="examples", title=split)
        axes[1, j].set(xlabel="epoch first classified correctly", ylabel="fraction of examples learned", ylim=(0, 1.02))
        for ax in axes[:, j]:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    return [_save(fig, run, "examples")]


def plot_overlap_runs(runs: list[RunDir], path: Path, split: str = "train") -> Path:
    """Intersection and union of consecutive epochs' correct sets for several runs in one figure
    (the accuracy-oscillation figure)."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, run in enumerate(runs):
        m = run.read_metrics()
        x_u, union = _series(m, f"{split}_union")
        x_i, inter = _series(m, f"{split}_intersection")
        ax.plot(x_u, union, color=f"C{i}", lw=1, label=f"{run.path.name}: union")
        ax.plot(x_i, inter, color=f"C{i}", lw=1, ls="--", label=f"{run.path.name}: intersection")
    from .measures.curves import lr_drops
    for k, e in enumerate(lr_drops(runs[0].read_metrics()) if runs else []):   # the learning rate's steps, where the oscillation changes
        ax.axvline(e - 0.5, color="grey", ls=":", lw=1, label="learning-rate step" if k == 0 else None)
    ax.set(xlabel="epoch", ylabel=f"fraction of {split} examples", ylim=(0, 1.02),
           title=f"{split}: examples correct at epoch t-1 and t (intersection) or at either (union)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, Path(path))


ESTIMATOR_WORDS = {"binning": "binning", "binning-size": "bins of fixed width", "kde-upper": "KDE upper bound",
                   "kde-lower": "KDE lower bound"}
LAYER_STYLES = ["-", "--", "-.", ":"]   # with the colour, keeps layers that lie on one another apart


def describe_corruption(corrupt: str | None) -> str:
    """A corruption in words: 'true labels', 'random labels', 'labels 0.2 random', 'random pixels 1'."""
    from .config import parse_corruption
    kind, p = parse_corruption(corrupt or "none")
    return "true labels" if kind == "none" or (kind == "labels" and p == 0) else \
        "random labels" if kind == "labels" and p == 1 else \
        f"labels {p:g} random" if kind == "labels" else f"{kind.replace('-', ' ')} {p:g}"


def describe_run(cfg: dict) -> str:
    """A run's labels, activation and hidden widths in words, e.g. 'true labels, tanh, hidden 10-7-5-4-3'
    (figure titles)."""
    labels = describe_corruption(cfg.get("corrupt", "none"))
    activation = model_args_of(cfg).get("activation") or ("tanh" if cfg.get("model") == "tishby" else "relu")
    widths = hidden_widths(cfg)
    return f"{labels}, {activation}" + (f", hidden {'-'.join(map(str, widths))}" if widths else "")


def group_titles(paths) -> dict[str, str]:
    """Folder name -> its runs described in words; folders that read alike keep their name too."""
    words = {}
    for p in map(Path, paths):
        dirs = runs_in(p)
        words[p.name] = describe_run(RunDir(dirs[0]).read_config()) if dirs else p.name
    counts = {w: list(words.values()).count(w) for w in words.values()}
    return {g: w if counts[w] == 1 else f"{w} ({g})" for g, w in words.items()}


def plot_infoplane(paths, folder=None) -> list[Path]:
    """Per estimator: the information plane of each run or seed group (mean over seeds; one line per
    captured epoch joining the layers, colored by epoch on a log scale), and I(X;T) of each layer
    against epoch (mean over seeds, with the 95% interval of that mean as a band: Student's t, the range of 2 seeds), with the
    estimator's ceiling log2 N drawn. Groups side
    by side, titled in words; legends outside the data; figures go to `folder` (default the first
    path's figures/)."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from .measures.stats import mean_band
    rows = [r for r in read_info(paths) if r.get("split") != "test"]   # the training set's (or all of a task's)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    titles = group_titles(paths)
    folder = Path(folder) if folder is not None else Path(paths[0]) / "figures"
    out = []
    for est in sorted({r["estimator"] for r in rows}):
        sel = [r for r in rows if r["estimator"] == est]
        layers = sorted({r["layer"] for r in sel})
        last = max(r["epoch"] for r in sel)
        norm = LogNorm(vmin=1, vmax=last + 1)
        mine_groups = [g for g in groups if any(r["group"] == g for r in sel)]   # groups with this estimator
        fig_p, axes_p = plt.subplots(1, len(mine_groups), figsize=(5.5 * len(mine_groups), 4.8), squeeze=False)
        fig_x, axes_x = plt.subplots(1, len(mine_groups), figsize=(5.5 * len(mine_groups) + 2.8, 4.2), squeeze=False,
                                     sharey=True)
        saturated_any = False
        for ax_p, ax_x, g in zip(axes_p[0], axes_x[0], mine_groups):
            mine = [r for r in sel if r["group"] == g]
            ceiling = float(np.log2(max(r["n"] for r in mine)))
            title = f"{titles.get(g, g)}\n{ESTIMATOR_WORDS.get(est, est)}"   # two lines: side-by-side titles never meet
            epochs = sorted({r["epoch"] for r in mine})
            # table[e][layer] -> list over seeds of (ixt, ity)
            table = {}
            for r in mine:
                table.setdefault(r["epoch"], {}).setdefault(r["layer"], []).append((r["ixt"], r["ity"]))
            for e in epochs:
                pts = np.array([np.mean(table[e][l], axis=0) for l in layers if l in table[e]])
                color = plt.cm.viridis(norm(e + 1))
                ax_p.plot(pts[:, 0], pts[:, 1], "-", color=color, lw=0.5, alpha=0.6)
                ax_p.scatter(pts[:, 0], pts[:, 1], color=color, s=8, zorder=3)
            ax_p.axvline(ceiling, color="grey", ls=":", lw=1)
            ax_p.annotate(f"ceiling log2 N = {ceiling:.3g}", (ceiling, 0), xycoords=("data", "axes fraction"),
                          xytext=(-3, 3), textcoords="offset points", rotation=90, ha="right", va="bottom",
                          fontsize=7, color="grey")
            # name each layer at its last captured point (the hidden layers in order, the output last)
            final, placed = table[epochs[-1]], []
            for l in layers:
                if l in final:
                    x, y = np.mean(final[l], axis=0)
                    near = sum(abs(x - px) < 0.3 and abs(y - py) < 0.05 for px, py in placed)   # stack, not overlap
                    placed.append((x, y))
                    ax_p.annotate("out" if l == max(layers) else f"L{l + 1}", (x, y), textcoords="offset points",
                                  xytext=(4, 4 - 9 * near), fontsize=7)
            ax_p.set(xlabel="I(X;T) bits", ylabel="I(T;Y) bits", title=title)
            for k, l in enumerate(layers):
                xs = [e for e in epochs if l in table[e]]
                vals = [np.array(table[e][l])[:, 0] for e in xs]
                x1 = np.array(xs) + 1
                ax_x.plot(x1, [v.mean() for v in vals], color=f"C{k}", ls=LAYER_STYLES[k % len(LAYER_STYLES)],
                          lw=1.6, label=f"layer {l + 1}" if l < max(layers) else "output")
                stack = np.full((max(len(v) for v in vals), len(vals)), np.nan)   # seeds x captures
                for j, v in enumerate(vals):
                    stack[:len(v), j] = v
                ax_x.fill_between(x1, *mean_band(stack), color=f"C{k}", alpha=0.15, lw=0)
                saturated_any = mark_saturated(ax_x, x1, [v.mean() for v in vals], ceiling) or saturated_any
            ax_x.axhline(ceiling, color="grey", ls=":", lw=1)
            ax_x.set(xscale="log", xlabel="epoch + 1", ylabel="I(X;T) bits", title=title, ylim=(0, ceiling * 1.06))
            ax_x.grid(alpha=0.3)
        handles, labels = axes_x[0, 0].get_legend_handles_labels()
        handles += [plt.Line2D([], [], color="grey", lw=6, alpha=0.2), plt.Line2D([], [], color="grey", ls=":")]
        labels += ["95% interval of the mean\nover seeds (t; range of 2)", "ceiling log2 N"]
        if saturated_any:
            handles.append(plt.Line2D([], [], color="black", lw=6, alpha=0.15))
            labels.append(SATURATED)
        fig_x.tight_layout(rect=(0, 0, 1 - 2.7 / fig_x.get_figwidth(), 1))   # the legend, beside the panels
        fig_x.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
        fig_p.text(0.01, -0.03, "each line: one captured epoch, its layers joined (mean over seeds); "
                               "L1, L2, ...: the hidden layers at the last epoch; out: the output layer",
                   fontsize=7, color="dimgrey")
        fig_p.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes_p[0].tolist(), label="epoch + 1")
        out.append(save_figure(fig_p, folder / f"infoplane-{est}.png"))
        out.append(save_figure(fig_x, folder / f"ixt-{est}.png"))
    return out


def mark_saturated(ax, epochs, ixt, ceiling: float) -> bool:
    """Overlay the stretch of an I(X;T) curve that ends at the estimator's ceiling (within 0.1 bit,
    from the epoch it stays there: measures.information.compression), where the estimate cannot show
    compression; True when there is one."""
    import numpy as np
    from .measures.information import compression
    epochs, ixt = np.asarray(epochs), np.asarray(ixt, dtype=float)
    c = compression(epochs, ixt, ceiling)
    if not c["saturated"]:
        return False
    at = epochs >= c["at_ceiling_from"]
    ax.plot(epochs[at], ixt[at], color="black", lw=6, alpha=0.15, solid_capstyle="butt", zorder=1)
    return True


SATURATED = "at the ceiling from there on\n(saturated: no compression visible)"


def plot_memorizing_ib(panels: list[tuple[str, dict]], ceiling: float, path: Path, last: int = 5,
                       widths=None) -> Path:
    """The Memorizing IB study's layout: top, the information plane of each panel (one line per captured
    epoch joining its layers, colored by epoch on a linear scale); bottom, I(X;T) of the last `last`
    layers against epoch, with the binning estimator's ceiling log2 N. `panels`: (title, table) with
    table[layer] = (epochs, ixt, ity) arrays (means over seeds), layers numbered from 0, the output last;
    `widths` (the hidden widths) names the layers' sizes."""
    import numpy as np
    from matplotlib.colors import Normalize
    fig, axes = plt.subplots(2, len(panels), figsize=(6 * len(panels), 9.5), squeeze=False,
                             gridspec_kw={"hspace": 0.32})
    for j, (title, table) in enumerate(panels):
        layers = sorted(table)
        epochs = table[layers[0]][0]
        norm = Normalize(vmin=0, vmax=max(epochs.max(), 1))
        ax = axes[0, j]
        for i, e in enumerate(epochs):
            pts = np.array([(table[l][1][i], table[l][2][i]) for l in layers])
            color = plt.cm.plasma(norm(e))
            ax.plot(pts[:, 0], pts[:, 1], "-", color=color, lw=0.4, alpha=0.5)
            ax.scatter(pts[:, 0], pts[:, 1], color=color, s=7, zorder=3)
        ax.axvline(ceiling, color="grey", ls=":", lw=1)
        ax.set(xlabel="I(X;T) bits", ylabel="I(T;Y) bits", title=f"({'ab'[j]}) {title}: information plane")
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="plasma"), ax=ax, label="epoch")
        ax = axes[1, j]
        shown = layers[-last:]
        for k, l in enumerate(shown):
            e, ixt, _ = table[l]
            name = f"layer {l + 1}" + (" (logits)" if l == layers[-1] else f" ({widths[l]} units)" if widths else "")
            ax.plot(e, ixt, color=f"C{k}", lw=1.4, ls="-" if k % 2 == 0 else "--", label=name)
            if mark_saturated(ax, e, ixt, ceiling) and SATURATED not in ax.get_legend_handles_labels()[1]:
                ax.plot([], [], color="black", lw=6, alpha=0.15, label=SATURATED)
        ax.axhline(ceiling, color="grey", ls=":", lw=1, label=f"ceiling log2 N = {ceiling:.2f}")
        ax.set(xlabel="epoch", ylabel="I(X;T) bits", title=f"({'cd'[j]}) {title}: I(X;T) of the last {len(shown)} layers",
               ylim=(0, ceiling + 0.6))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    return save_figure(fig, Path(path))


def plot_noise_ramp(path, summaries: list[dict]) -> Path:
    """Three panels sharing the noise-step axis (alpha on top of each): the information in the weights
    (mean -1/2 ln alpha per weight, nats; the schedule, one line), then train and test accuracy under
    noise (mean and spread of the noisy passes), one curve per network, colored by its label corruption
    and styled by its seed; dots where train accuracy first falls below half of its noise-free value
    (`summaries`: each ramp run's, in the order of its runs)."""
    import numpy as np
    dirs = runs_in(path, "noise")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), sharex=True)
    colors = {0.0: "C0", 0.5: "C2", 1.0: "C3"}
    styles = ["-", "--", ":", "-."]
    every = RunDir(dirs[0]).read_config().get("every", 1) if dirs else 1
    seen = {}
    for d, summary in zip(dirs, summaries):
        m = [r for r in RunDir(d).read_metrics() if r["epoch"] > 0]
        p = summary.get("label_corruption") or 0.0
        color = colors.get(p, plt.cm.viridis(p))
        k = seen.setdefault(p, 0)
        seen[p] += 1
        e = np.array([r["epoch"] for r in m]) / every
        for ax, split in zip(axes[1:], ("train", "test")):
            acc = np.array([r[f"{split}_acc"] for r in m])
            std = np.array([r.get(f"{split}_acc_std", 0.0) for r in m])
            ax.plot(e, acc, color=color, ls=styles[k % len(styles)], lw=1.3,
                    label=f"{'true labels' if p == 0 else f'labels p={p:g}'}, net {k + 1}" if split == "train" else None)
            ax.fill_between(e, acc - std, acc + std, color=color, alpha=0.12)
        half = summary.get("half_acc")
        if half:
            axes[1].plot([half["epoch"] / every], [half["train_acc"]], "o", color=color, mec="k", ms=6, zorder=5)
    if dirs:   # the schedule is the same for every network: one line
        m = [r for r in RunDir(dirs[0]).read_metrics() if r["epoch"] > 0]
        axes[0].plot(np.array([r["epoch"] for r in m]) / every, [r["neg_half_log_alpha"] for r in m], color="k",
                     label="the schedule (every network)")
        ticks = m[::max(1, len(m) // 6)]
        for ax in axes:   # alpha on top of every panel
            top = ax.secondary_xaxis("top")
            top.set_xticks([r["epoch"] / every for r in ticks], [f"{r['alpha']:.0e}" for r in ticks], fontsize=7)
            top.set_xlabel("alpha", fontsize=8)
    xlabel = f"noise step ({every} epoch{'s' if every != 1 else ''} each)"
    axes[0].set(xlabel=xlabel, ylabel="mean -1/2 ln alpha per weight (nats)", title="information in the weights")
    axes[1].set(xlabel=xlabel, ylabel="accuracy", title="train accuracy under noise", ylim=(0, 1.02))
    axes[2].set(xlabel=xlabel, ylabel="accuracy", title="test accuracy under noise", ylim=(0, 1.02))
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    handles, labels = axes[1].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], marker="o", ls="", color="grey", mec="k",
                              label="first step below half the noise-free train accuracy"))
    fig.legend(handles=handles, fontsize=7, loc="upper center", ncol=4, frameon=False,
               bbox_to_anchor=(0.5, 0.0))   # below the panels: no curve is covered
    return save_figure(fig, Path(path) / "figures" / "noise_ramp.png")


def plot_grad_snr(paths) -> Path | None:
    """Per layer, the norm of the mean gradient (solid) and of its standard deviation (dashed) over
    the batches of captured epochs, mean over seeds; one panel per run or seed group."""
    import numpy as np
    groups = []
    for p in map(Path, paths):
        runs = [RunDir(d) for d in runs_in(p)]
        rows = [m for r in runs for m in r.read_metrics() if any(k.startswith("grad_mean/") for k in m)]
        if rows:
            groups.append((p.name, rows))
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False, sharey=True)
    for ax, (name, rows) in zip(axes[0], groups):
        layers = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("grad_mean/")})
        epochs = sorted({r["epoch"] for r in rows})
        for i, layer in enumerate(layers):
            for kind, style in (("grad_mean", "-"), ("grad_std", "--")):
                ys = [np.mean([r[f"{kind}/{layer}"] for r in rows if r["epoch"] == e]) for e in epochs]
                ax.plot(epochs, ys, style, color=f"C{i}", label=f"{layer} {kind.split('_')[1]}")
        ax.set(xscale="log", yscale="log", xlabel="epoch", ylabel="gradient norm", title=f"{name}: gradient mean and std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, Path(paths[0]) / "figures" / "grad_snr.png")


def plot_memorization(out: Path, table) -> Path:
    """Feldman & Zhang's histogram of memorization estimates, corrupted and clean examples apart (a
    memorize folder's per-example table: mem, corrupted)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = [i / 20 - 1 for i in range(41)]
    for flag, color, name in ((False, "C0", "clean"), (True, "C3", "corrupted")):
        part = table[table["corrupted"] == flag]["mem"].dropna()
        if len(part):
            ax.hist(part, bins=bins, color=color, alpha=0.6, label=f"{name} ({len(part)} examples)")
    ax.set(xlabel="memorization estimate mem(i)", ylabel="examples", yscale="log",
           title="memorization: P[right | trained on it] - P[right | held out]")
    ax.legend(frameon=False)
    return save_figure(fig, Path(out) / "figures" / "memorization.png")


def plot_signal_rocs(out: Path, corrupted, scores: dict) -> Path:
    """ROC curves of every signal ranking the corrupted examples first, in one plot (scores: name ->
    (score high for suspect examples, what it needs))."""
    from sklearn.metrics import roc_auc_score, roc_curve
    import numpy as np
    fig, ax = plt.subplots(figsize=(7, 6))
    y = np.asarray(corrupted, dtype=bool)
    for i, (name, (score, _)) in enumerate(sorted(scores.items(), key=lambda kv: -roc_auc_score(
            y[~np.isnan(kv[1][0])], kv[1][0][~np.isnan(kv[1][0])]))):
        keep = ~np.isnan(score)
        fpr, tpr, _ = roc_curve(y[keep], score[keep])
        ax.plot(fpr, tpr, lw=1.4, ls=LAYER_STYLES[i // 10 % len(LAYER_STYLES)],
                label=f"{name}: AUROC {roc_auc_score(y[keep], score[keep]):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="false positive rate (clean examples flagged)", ylabel="true positive rate (corrupted found)",
           title=f"finding the {int(y.sum())} corrupted labels among {len(y)} examples")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return save_figure(fig, Path(out) / "figures" / "signals_roc.png")


def plot_data_map(out: Path, table) -> Path:
    """Swayamdipta et al.'s data map (variability against confidence of the assigned label over
    epochs) of the whole-set run, corrupted and clean examples coloured apart."""
    fig, ax = plt.subplots(figsize=(7, 6))
    for flag, color, name in ((False, "C0", "clean"), (True, "C3", "corrupted")):
        part = table[table["corrupted"] == flag]
        ax.scatter(part["variability"], part["confidence"], s=3, alpha=0.4, color=color,
                   label=f"{name} ({len(part)})", rasterized=True)
    ax.set(xlabel="variability (std of p(label) over epochs)", ylabel="confidence (mean p(label) over epochs)",
           title="data map of one run on every example")
    ax.legend(frameon=False, markerscale=4)
    return save_figure(fig, Path(out) / "figures" / "data_map.png")


def _show(ax, img):
    img = img.astype(float)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_memorized_by_class(out: Path, g: dict) -> Path:
    """Per class (rows), the clean training examples of highest memorization, with mem(i) (as
    Feldman & Zhang's figure of memorized examples)."""
    images, mem = g["class_images"], g["class_mem"]
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.3 * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            _show(axes[r, c], images[r, c])
            axes[r, c].set_title(f"{mem[r, c]:.2f}", fontsize=7)
        axes[r, 0].set_ylabel(f"class {g['classes'][r]}", fontsize=8)
    fig.suptitle("most memorized clean training examples per class (mem; among ties, the most surely "
                 "memorized first: the higher lower end of its 95% interval)", fontsize=9)
    return save_figure(fig, Path(out) / "figures" / "memorized_by_class.png")


def plot_influence_pairs(out: Path, g: dict) -> Path:
    """The train-test pairs of highest influence: each test image beside the training image whose
    presence most raises the chance it is classified right."""
    import numpy as np
    n = len(g["pair_value"])
    tested = "pair_p" in g and len(g["pair_p"]) and not np.all(np.isnan(g["pair_p"]))
    fig, axes = plt.subplots(2, max(n, 1), figsize=(1.2 * max(n, 3), 2.8), squeeze=False)
    for j in range(n):
        _show(axes[0, j], g["pair_test"][j])
        axes[0, j].set_title(f"test {g['pair_test_label'][j]}", fontsize=7)
        _show(axes[1, j], g["pair_train"][j])
        axes[1, j].set_title(f"train {g['pair_train_label'][j]}\n{g['pair_value'][j]:.2f}"
                             + (f", p {g['pair_p'][j]:.2g}" if tested else ""), fontsize=7)
    if not n:
        axes[0, 0].text(0.5, 0.5, "no pair above what chance gives", ha="center", va="center", fontsize=8)
        for ax in axes[:, 0]:
            ax.axis("off")
    fig.suptitle("highest-influence pairs" + (" above what chance gives any pair (permutation null, 5%)"
                                              if tested else "") +
                 ": test image (top), training image (below), labels used, infl", fontsize=9)
    return save_figure(fig, Path(out) / "figures" / "influence_pairs.png")


def plot_weight_information(rows: list[dict], differences: dict, path, paper_nats: float = 3.0) -> Path:
    """The learned-noise study (Achille & Soatto 2018), against beta, one colour per training set size
    N: (a) the information in the weights per training example (nats, KL to the initialization's
    law), true labels solid and random labels dashed (means over seeds, runs as dots); (b) random
    minus true labels per example with Welch's t 95% interval, beside ln K and the paper's figure;
    (c) the train accuracy under noise (solid, random labels dashed) and clean (dotted, random labels
    dash-dotted).
    `rows`: weight_information.final_rows; `differences`: N -> [(beta, the difference's mean, lo, hi,
    n a side)]."""
    import math
    import numpy as np
    ns = sorted({r["N"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for k, n in enumerate(ns):
        for p, style in ((0.0, "-"), (1.0, "--")):
            g = [r for r in rows if r["N"] == n and r["p"] == p]
            if not g:
                continue
            bs = sorted({r["beta"] for r in g})
            axes[0].plot(bs, [np.mean([r["nats"] for r in g if r["beta"] == b]) for b in bs], style, marker="o",
                         color=f"C{k}", label=f"N {n}, {'random' if p else 'true'} labels")
            axes[0].scatter([r["beta"] for r in g], [r["nats"] for r in g], color=f"C{k}", s=8, alpha=0.5)
            for key, ls in (("train_acc_noisy", style), ("train_acc", ":" if p == 0 else "-.")):
                axes[2].plot(bs, [np.mean([r[key] for r in g if r["beta"] == b]) for b in bs], ls,
                             marker="o" if key == "train_acc_noisy" else None, color=f"C{k}",
                             label=f"N {n}, {'random' if p else 'true'}, {'noisy' if key == 'train_acc_noisy' else 'clean'}")
        d = differences.get(n, [])
        if d:
            axes[1].errorbar([x[0] for x in d], [x[1] for x in d], yerr=[[x[1] - x[2] for x in d], [x[3] - x[1] for x in d]],
                             marker="o", capsize=3, color=f"C{k}", label=f"N {n} (n = {d[0][4]} a side)")
    k_classes = rows[0]["classes"] if rows else 10
    axes[1].axhline(math.log(k_classes), color="gray", ls=":", label=f"ln {k_classes}: one random label")
    axes[1].axhline(paper_nats, color="k", ls="--", lw=0.8, label=f"Achille & Soatto: about {paper_nats:g} nats")
    axes[2].axhline(1 / k_classes, color="gray", ls=":", lw=0.8)
    for a in axes:
        a.axvline(1.0, color="gray", lw=0.6)
    axes[0].set(xscale="log", yscale="log", xlabel="beta", ylabel="information per training example (nats)",
                title="(a) information in the weights")
    axes[1].set(xscale="log", xlabel="beta", ylabel="random minus true labels (nats per example)",
                title="(b) what random labels cost (Welch t 95%)")
    axes[1].set_yscale("symlog", linthresh=1.0)
    axes[2].set(xscale="log", xlabel="beta", ylabel="train accuracy on the labels trained", ylim=(0, 1.02),
                title="(c) fit under noise and clean")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    return save_figure(fig, Path(path))


def plot_removal(rows: dict, path) -> Path:
    """Feldman & Zhang's marginal utility: test accuracy after removing K training examples, the most
    memorized or random ones; `rows`: (kind, K) -> Interval over the retrainings (mean, lo, hi, n, kind)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for kind, label, color in (("random", "random examples removed", "tab:blue"),
                               ("mem", "most memorized removed", "tab:red")):
        ks = sorted(k for kd, k in rows if kd == kind)
        if not ks:
            continue
        m = [rows[kind, k].mean for k in ks]
        ax.errorbar(ks, m, yerr=[[a - rows[kind, k].lo for a, k in zip(m, ks)],
                                 [rows[kind, k].hi - a for a, k in zip(m, ks)]],
                    marker="o", capsize=3, color=color, label=label)
    any_row = next(iter(rows.values()))
    ax.set(xlabel="training examples removed (K)", ylabel="test accuracy",
           title=f"the value of memorized examples (mean, {any_row.kind}, n = {any_row.n} a point)")
    ax.legend(fontsize=8)
    return save_figure(fig, Path(path))



def plot_signals_against_length(scores: dict, compute: dict, draws: dict, path) -> Path:
    """Every per-example signal's AUROC (top) and average precision (bottom) at ranking the corrupted
    labels first, against the epochs trained, one column per label noise mode: the mean over the
    corruption draws with its t 95% band. A colour a signal; the line says the compute: solid the
    subset models (many and few), dashed cleanlab's folds, dotted one run, dash-dotted runs averaged. `scores`: memorize_study.scores_against_length;
    `compute`: signal -> runs' worth of training; `draws`: mode -> n."""
    modes = list(scores)
    fig, axes = plt.subplots(2, len(modes), figsize=(7.5 * len(modes), 10), squeeze=False)
    signals = list(next(iter(scores.values())))
    for j, mode in enumerate(modes):
        for k, sig in enumerate(signals):
            by_e = scores[mode][sig]
            es = sorted(by_e)
            style = ":" if compute[sig] <= 1 else "--" if "folds" in sig else "-." if "averaged" in sig else "-"
            color = plt.cm.tab20(k % 20)   # one colour a signal
            for i, key in enumerate(("auroc", "ap")):
                iv = [by_e[e][key] for e in es]
                ax = axes[i][j]
                ax.plot(es, [x.mean for x in iv], style, marker="o", ms=3, color=color, lw=1.5,
                        label=f"{sig}: {compute[sig]:.1f} runs")
                ax.fill_between(es, [x.lo for x in iv], [x.hi for x in iv], color=color, alpha=0.08)
        for i, key in enumerate(("AUROC", "average precision")):
            axes[i][j].set(xlabel="epochs trained", ylabel=key, xscale="log",
                           title=f"{mode} label noise: {key} (mean of {draws[mode]} draws, t 95%)")
            axes[i][j].grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.14, hspace=0.3)
    return save_figure(fig, Path(path))
