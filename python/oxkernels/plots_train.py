"""PNG plots of a training run and of a hyperparameter search (matplotlib, Agg backend).

Import this module only when plotting: it imports matplotlib.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history, path):
    """Train/test loss and test accuracy against the epoch."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], "s--", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in history], "o-", color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion, classes, path):
    """Confusion matrix: rows are the true class, columns the predicted one."""
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
           title="confusion matrix (test set)")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_misclassified(images, labels, predictions, classes, path, count=25):
    """A grid of the first `count` misclassified test images, titled "true → predicted".
    images: uint8 (N, C, H, W) NumPy; labels, predictions: (N,)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    wrong = np.flatnonzero(labels != predictions)[:count]
    cols = 5
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray")
        else:
            ax.imshow(np.transpose(img, (1, 2, 0)))
        ax.set_title(f"{classes[labels[i]]} → {classes[predictions[i]]}", fontsize=8)
    if len(wrong) == 0:
        axes.flat[0].set_title("no misclassified images")
    fig.suptitle("misclassified test images (true → predicted)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_training_plots(out: Path, metrics, test_set, test_samples, predictions) -> list:
    """curves.png, and when a test evaluation exists confusion.png and misclassified.png."""
    out = Path(out)
    written = []
    plot_curves(metrics["epochs"], out / "curves.png")
    written.append("curves.png")
    if predictions is not None and "confusion_matrix" in metrics:
        plot_confusion(metrics["confusion_matrix"], metrics["classes"], out / "confusion.png")
        plot_misclassified(test_set.images_np[:test_samples], test_set.labels_np[:test_samples],
                           predictions.numpy(), metrics["classes"], out / "misclassified.png")
        written += ["confusion.png", "misclassified.png"]
    return written


def plot_accuracy_vs_lr(results, path):
    """Test accuracy of each trial against its learning rate (log scale), one colour per
    optimizer, one marker per activation."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"relu": "o", "sigmoid": "^"}
    optimizers = sorted({r["config"]["optimizer"] for r in results})
    colours = dict(zip(optimizers, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for opt in optimizers:
        for act, marker in markers.items():
            rows = [r for r in results if r["config"]["optimizer"] == opt and r["config"]["activation"] == act]
            if rows:
                ax.scatter([r["config"]["lr"] for r in rows], [100 * r["test_accuracy"] for r in rows],
                           color=colours[opt], marker=marker, label=f"{opt}, {act}")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decade labels only
    ax.set(xlabel="learning rate", ylabel="test accuracy (%)", title="hyperparameter search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
