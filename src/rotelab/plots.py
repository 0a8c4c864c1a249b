"""Figures from run directories (never from live objects): everything is recomputable from disk."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .store import RunDir  # noqa: E402


def _series(metrics: list[dict], key: str):
    pts = [(m["epoch"], m[key]) for m in metrics if m.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _save(fig, run: RunDir, name: str) -> Path:
    run.figures.mkdir(exist_ok=True)
    path = run.figures / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(run: RunDir) -> Path:
    """Loss and accuracy per epoch; train accuracy split into clean and corrupted examples."""
    m = run.read_metrics()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("train_loss", "-"), ("test_loss", "--")):
        ax_loss.plot(*_series(m, key), style, label=key.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for key, style in (("train_acc", "-"), ("test_acc", "--"), ("train_acc_clean", ":"),
                       ("train_acc_corrupted", "-."), ("train_acc_true", (0, (1, 3)))):
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


def plot_runs(paths) -> list[Path]:
    out = []
    for p in paths:
        run = RunDir(p)
        if not run.metrics_file.is_file():
            from .config import ConfigError
            raise ConfigError("runs", f"{run.path} has no metrics.jsonl; give a rotelab run directory")
        out += [plot_curves(run), plot_overlap(run)]
    return out
