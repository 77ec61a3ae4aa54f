"""Training curves as a PNG (matplotlib, headless)."""
from __future__ import annotations

from .io import atomic_path


def plot_curves(history: list[dict], path, title: str = "", clip: float | None = None) -> None:
    """Loss and accuracy per epoch, and the gradient norm the clip saw (geometric mean and largest; log scale) where
    the epochs have it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    norms = [(h["epoch"], h["grad_norm"]) for h in history if (h.get("grad_norm") or {}).get("updates")]
    fig, axes = plt.subplots(1, 3 if norms else 2, figsize=(13.5 if norms else 9, 3.5))
    ax_loss, ax_acc = axes[0], axes[1]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "s-", label="test")
    ax_loss.set_xlabel("epoch"), ax_loss.set_ylabel("cross-entropy at the last step"), ax_loss.legend()
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "s-", label="test")
    ax_acc.set_xlabel("epoch"), ax_acc.set_ylabel("accuracy"), ax_acc.set_ylim(0, 1), ax_acc.legend()
    if norms:
        ax = axes[2]
        for key, style in (("geo_mean", "o-"), ("max", "^--")):
            points = [(e, g[key]) for e, g in norms if g[key]]  # None: overflowed; 0: no gradient (log scale)
            ax.plot([e for e, _ in points], [v for _, v in points], style, label=key.replace("_", " "))
        if clip is not None:
            ax.axhline(clip, color="grey", lw=0.8, ls=":", label="clip")
        ax.set_yscale("log"), ax.set_xlabel("epoch"), ax.set_ylabel("gradient norm before the clip"), ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
