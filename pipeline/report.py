"""The `compress` report: what the pipeline produced, as Markdown and self-contained HTML."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from export.flops import inference_flops, weight_count
from models import sparse_layers
from pipeline.checkpoint import load_checkpoint
from pipeline.document import Document


def _plot_learning_curve(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    mean = [float(r["eval_return"]) for r in rows]
    std = [float(r["eval_return_std"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, mean, marker="o", markersize=3)
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set(title=title, xlabel="env steps", ylabel="eval return")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, folder: Path) -> None:
    ckpt = load_checkpoint(out / "train" / "checkpoint.pt")
    cfg = ckpt.config
    with (out / "train" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    evaluation = json.loads((out / "evaluate" / "eval.json").read_text())
    actor = ckpt.build_actor()
    title = f"{cfg['env_id']}: {cfg['method']}-{cfg['algo']}, actor {1 - weight_count(actor) / weight_count(actor, False):.0%} sparse"
    _plot_learning_curve(rows, title, folder / "learning_curve.png")

    doc = Document(f"tinypolicy report: {cfg['env_id']}")
    doc.paragraph(f"Training: {cfg['method']} {cfg['algo'].upper()}, {ckpt.steps_done:,} env steps, "
                  f"seed {cfg['seed']}, hidden {cfg['hidden']}.")
    doc.heading("Return")
    doc.table(["policy", f"mean return over {evaluation['episodes']} episodes", "std"], [
        ["sparse actor (deterministic)", f"{evaluation['mean_return']:.1f}", f"{evaluation['std_return']:.1f}"],
        ["random actions", f"{evaluation['random_mean_return']:.1f}", f"{evaluation['random_std_return']:.1f}"]])
    doc.image(folder / "learning_curve.png", "learning curve (evaluation return during training)")
    doc.heading("Actor sparsity per layer")
    doc.table(["layer", "shape (out x in)", "nonzero weights", "density"], [
        [index, f"{layer.out_features} x {layer.in_features}", f"{int(layer.mask.sum()):,}", f"{layer.density:.1%}"]
        for index, layer in enumerate(sparse_layers(actor))], align_right_from=2)
    doc.paragraph(f"Actor: {weight_count(actor):,} of {weight_count(actor, False):,} weights nonzero; "
                  f"{inference_flops(actor):,} FLOPs per action vs {inference_flops(actor, False):,} dense.")
    doc.write(folder)
