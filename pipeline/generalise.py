"""`tinypolicy generalise`: does a distilled dataset train policies it was not distilled for?

Retrains, on one dataset, policies whose architecture or BC hyperparameters differ from the
distillation recipe, one factor at a time: width 32-512, depth 1-3, tanh or relu, lr x1/4 to
x4, BC steps x1/2 to x2 (the recipe itself is the reference row). Each variant trains
several fresh inits (batched) and rolls each out for a few episodes; writes
generalise.csv, generalise.md and generalise.png.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from tinypolicy.envs import random_policy_returns
from tinypolicy.ondevice.artefact import prepare_output_dir, write_json, write_text
from tinypolicy.ondevice.dataset import BCRecipe, load_dataset
from tinypolicy.pipeline.distill import retrain_and_evaluate
from tinypolicy.pipeline.rollouts import PopulationEvaluator
from tinypolicy.pipeline.settings import GeneraliseConfig
from tinypolicy.plots import save_figure, subplots
from tinypolicy.tables import write_csv

WIDTHS = (32, 64, 128, 256, 512)
DEPTHS = (1, 2, 3)
LR_FACTORS = (0.25, 0.5, 2.0, 4.0)
STEP_FACTORS = (0.5, 2.0)


def variants(recipe: BCRecipe) -> list[tuple[str, str, BCRecipe]]:
    """(factor, label, recipe) for the reference and every one-factor change of it."""
    width, depth = recipe.hidden[0], len(recipe.hidden)
    rows = [("reference", f"{depth}x{width} {recipe.activation}", recipe)]
    rows += [("width", f"{depth}x{w}", replace(recipe, hidden=(w,) * depth)) for w in WIDTHS if w != width]
    rows += [("depth", f"{d}x{width}", replace(recipe, hidden=(width,) * d)) for d in DEPTHS if d != depth]
    rows += [("activation", a, replace(recipe, activation=a)) for a in ("tanh", "relu") if a != recipe.activation]
    rows += [("lr", f"lr x{f:g}", replace(recipe, lr=recipe.lr * f)) for f in LR_FACTORS]
    rows += [("bc steps", f"steps x{f:g}", replace(recipe, steps=max(1, round(recipe.steps * f))))
             for f in STEP_FACTORS]
    return rows


def generalise(dataset_path: str | Path, env_id: str, out_dir: str | Path | None = None,
               seeds: int = GeneraliseConfig.seeds, episodes: int = GeneraliseConfig.episodes,
               workers: int = GeneraliseConfig.workers, progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    source = Path(dataset_path)
    dataset = load_dataset(source, env_id=env_id)
    out = prepare_output_dir(out_dir or (source if source.is_dir() else source.parent) / "generalise")
    rows = []
    init_seeds = list(range(200, 200 + seeds))
    with PopulationEvaluator(env_id, workers=workers) as evaluator:
        for factor, label, recipe in tqdm(variants(dataset.recipe), disable=not progress, desc="generalise",
                                          unit="variant"):
            returns = retrain_and_evaluate(dataset, evaluator, init_seeds, episodes, recipe=recipe)
            rows.append({"factor": factor, "variant": label, "hidden": "x".join(map(str, recipe.hidden)),
                         "activation": recipe.activation, "lr": recipe.lr, "bc_steps": recipe.steps,
                         "mean_return": float(returns.mean()), "std_return": float(returns.std()),
                         "returns": [round(float(r), 1) for r in returns]})
    random_return = float(random_policy_returns(env_id, 10, 1000).mean())

    write_csv(out / "generalise.csv", list(rows[0]),
              ({**r, "returns": " ".join(map(str, r["returns"]))} for r in rows))

    lines = [f"Dataset {dataset.sha256[:12]} ({env_id}, D={dataset.size}); {seeds} fresh inits x {episodes} "
             f"episodes per variant; random policy {random_return:.1f}", "",
             "| factor | variant | hidden | act | lr | BC steps | return (mean +- sd over inits) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['factor']} | {r['variant']} | {r['hidden']} | {r['activation']} | {r['lr']:.4g} | "
              f"{r['bc_steps']} | {r['mean_return']:.1f} +- {r['std_return']:.1f} |" for r in rows]
    table = "\n".join(lines)
    write_text(out / "generalise.md", table + "\n")

    fig, ax = subplots(figsize=(9, 4))
    positions = np.arange(len(rows))
    colours = {f: f"C{k}" for k, f in enumerate(dict.fromkeys(r["factor"] for r in rows))}
    ax.bar(positions, [r["mean_return"] for r in rows], yerr=[r["std_return"] for r in rows],
           color=[colours[r["factor"]] for r in rows], capsize=2)
    ax.axhline(rows[0]["mean_return"], color="k", lw=0.8, ls="--", label="distillation recipe")
    ax.axhline(random_return, color="grey", lw=0.8, ls=":", label="random policy")
    ax.set_xticks(positions, [r["variant"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("return")
    ax.set_title(f"{env_id}, D={dataset.size}: retraining with other architectures and hyperparameters")
    ax.legend(fontsize=8)
    save_figure(fig, out / "generalise.png")
    summary = {"env_id": env_id, "dataset": str(dataset_path), "random_policy_return": random_return,
               "rows": rows, "table": table, "out": str(out)}
    write_json(out / "generalise.json", summary)
    return summary
