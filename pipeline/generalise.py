"""`tinypolicy generalise`: does a distilled dataset train policies it was not distilled for?

A robot retrains its own policy, from its own (fresh) init, at its own size. This benchmark
retrains the dataset over a grid, every combination of hidden width, depth, activation, BC
learning rate and BC steps (torch, batched over the fresh inits of a cell; a run of n steps is
the first n steps of the longest run, so one run per width, depth, activation and lr covers
every step count), and, given an exported actor, its sparse topology retrained with the NumPy
on-device trainer (ondevice.retrain) over the activations, lrs and step counts. Each cell
trains `seeds` fresh inits and rolls each out for `episodes` episodes (the cell's return is
their mean). For a HaDES-F dataset the init it was distilled for (policy_init.npz beside it)
is retrained once more with the recipe, for comparison.

Per grid: the mean over cells, the worst cell, and the fraction of cells at or above
`target_share` of the expert's return (the dataset's meta.expert_return unless given).
Writes generalise.csv (one row per cell), generalise.json and generalise.md (summary, one
table per factor with the mean over the other factors, the worst cells) and generalise.png.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tinypolicy.config import from_dict
from tinypolicy.envs import random_policy_returns
from tinypolicy.models.bc import BCParams, bc_steps, init_params
from tinypolicy.ondevice import retrain as ondevice
from tinypolicy.ondevice.artefact import prepare_output_dir, write_json, write_text
from tinypolicy.ondevice.dataset import Dataset, load_dataset
from tinypolicy.pipeline.distill import evaluate_policies
from tinypolicy.pipeline.rollouts import PopulationEvaluator
from tinypolicy.pipeline.settings import RANDOM_BASELINE_EPISODES, RETRAINED_EVAL_SEED, GeneraliseConfig
from tinypolicy.plots import save_figure, subplots
from tinypolicy.shares import percent, positive_reference, share_of
from tinypolicy.tables import write_csv

INIT_SEED = 200  # fresh inits 200, 201, ...: never the distillation's own seeds
FACTORS = ("width", "depth", "activation", "lr", "bc_steps")
COLUMNS = ("grid", "trainer", "hidden", *FACTORS, "mean_return", "share_of_expert", "returns")


def _stack(members: list[ondevice.MLPParams]) -> dict[str, np.ndarray]:
    """NumPy trainer outputs as the rollout workers' stacked arrays (BCParams.numpy layout)."""
    arrays = {}
    for k in range(len(members[0].weights)):
        arrays[f"w{k}"] = np.stack([m.weights[k] for m in members]).astype(np.float32)
        arrays[f"b{k}"] = np.stack([m.biases[k] for m in members]).astype(np.float32)
    arrays["log_std"] = np.stack([m.log_std for m in members]).astype(np.float32)
    return arrays


def _dense_cells(dataset: Dataset, cfg: GeneraliseConfig, evaluator: PopulationEvaluator, progress: bool) -> list[dict]:
    states, actions = torch.as_tensor(dataset.states), torch.as_tensor(dataset.actions)
    seeds = range(INIT_SEED, INIT_SEED + cfg.seeds)
    steps = sorted(set(cfg.bc_steps))
    cells = []
    architectures = list(itertools.product(cfg.widths, cfg.depths, cfg.activations))
    for width, depth, activation in tqdm(architectures, disable=not progress, desc="generalise", unit="arch"):
        hidden = (width,) * depth
        inits = BCParams.stack([init_params(1, dataset.obs_dim, dataset.act_dim, hidden, s) for s in seeds])
        groups, labels = [], []
        for lr in cfg.lrs:
            run = bc_steps(states, actions, inits, lr, activation, dataset.recipe.adam_eps, dataset.recipe.grad_clip)
            for step, (params, _) in enumerate(itertools.islice(run, steps[-1]), 1):
                if step in steps:
                    groups.append((params.detach().numpy(), activation))
                    labels.append((lr, step))
        returns = evaluate_policies(evaluator, groups, dataset, cfg.episodes).reshape(len(groups), cfg.seeds)
        cells += [{"grid": "dense", "trainer": "torch", "hidden": hidden, "width": width, "depth": depth,
                   "activation": activation, "lr": lr, "bc_steps": step, "returns": r}
                  for (lr, step), r in zip(labels, returns)]
    return cells


def _mask_cells(dataset: Dataset, masks: list[np.ndarray], cfg: GeneraliseConfig,
                evaluator: PopulationEvaluator) -> list[dict]:
    """The exported topology, trained as a robot does (ondevice.retrain, NumPy)."""
    hidden = tuple(m.shape[0] for m in masks[:-1])
    sizes = [dataset.obs_dim, *hidden, dataset.act_dim]
    inits = [ondevice.init_params(sizes, seed, masks) for seed in range(INIT_SEED, INIT_SEED + cfg.seeds)]
    groups, labels = [], []
    for activation, lr, steps in itertools.product(cfg.activations, cfg.lrs, cfg.bc_steps):
        recipe = replace(dataset.recipe, hidden=hidden, activation=activation, lr=lr, steps=steps)
        trained = [ondevice.train_bc(dataset.states, dataset.actions, recipe, init, masks)[0] for init in inits]
        groups.append((_stack(trained), activation))
        labels.append((activation, lr, steps))
    returns = evaluate_policies(evaluator, groups, dataset, cfg.episodes).reshape(len(groups), cfg.seeds)
    return [{"grid": "mask", "trainer": "numpy", "hidden": hidden, "width": "mask", "depth": len(hidden),
             "activation": activation, "lr": lr, "bc_steps": steps, "returns": r}
            for (activation, lr, steps), r in zip(labels, returns)]


def _own_init(dataset: Dataset, init_path: Path, cfg: GeneraliseConfig, evaluator: PopulationEvaluator) -> dict:
    """HaDES-F's shipped init retrained with the recipe by the NumPy trainer (a robot's path)."""
    init = ondevice.read_init(init_path, dataset)
    recipe = replace(dataset.recipe, hidden=tuple(init.sizes[1:-1]))
    trained, _ = ondevice.train_bc(dataset.states, dataset.actions, recipe, init)
    returns = evaluate_policies(evaluator, [(_stack([trained]), recipe.activation)], dataset, cfg.episodes)
    return {"init": str(init_path), "hidden": recipe.hidden, "activation": recipe.activation,
            "mean_return": float(returns[0])}


def summarise(cells: list[dict], expert_return: float | None, target_share: float) -> dict:
    """Mean over cells, the worst cell and (with an expert return) the fraction of cells at or
    above `target_share` of it. A cell's return is the mean over its fresh inits."""
    means = np.array([c["mean_return"] for c in cells])
    worst = cells[int(means.argmin())]
    summary = {"cells": len(cells), "policies": sum(len(c["returns"]) for c in cells),
               "mean_return": float(means.mean()), "worst_return": float(means.min()), "worst_cell": _label(worst)}
    if positive_reference(expert_return):
        summary |= {"mean_share": share_of(means.mean(), expert_return),
                    "worst_share": share_of(means.min(), expert_return),
                    "fraction_at_target": float(np.mean([share_of(m, expert_return) >= target_share for m in means]))}
    return summary


def _label(cell: dict) -> str:
    hidden = "-".join(map(str, cell["hidden"]))
    return (f"{'mask ' if cell['grid'] == 'mask' else ''}{hidden} {cell['activation']}, lr {cell['lr']:g}, "
            f"{cell['bc_steps']} steps")


def _marginals(cells: list[dict], factor: str) -> list[tuple[object, float, float]]:
    """(value, mean over cells with it, worst cell with it) per value of `factor`."""
    values = list(dict.fromkeys(c[factor] for c in cells))
    rows = []
    for value in values:
        means = [c["mean_return"] for c in cells if c[factor] == value]
        rows.append((value, float(np.mean(means)), float(np.min(means))))
    return rows


def _varied(cells: list[dict]) -> list[tuple[str, list]]:
    """(factor, its marginals) for each factor that takes more than one value in `cells`."""
    return [(factor, rows) for factor in FACTORS if len(rows := _marginals(cells, factor)) > 1]


def _markdown(dataset: Dataset, cfg: GeneraliseConfig, summaries: dict, cells: list[dict], expert_return,
              random_return: float, own_init: dict | None) -> str:
    def of_expert(value: float) -> str:
        return percent(share_of(value, expert_return))

    target = f"{cfg.target_share:.0%}"
    lines = [f"Dataset {dataset.sha256[:12]} ({dataset.env_id}, D={dataset.size}, "
             f"{dataset.meta.get('mode', '?')} mode); {cfg.seeds} fresh inits (seeds {INIT_SEED}-"
             f"{INIT_SEED + cfg.seeds - 1}) x {cfg.episodes} episodes per cell; expert "
             f"{'unknown (pass --expert-return)' if expert_return is None else f'{expert_return:.1f}'}; "
             f"random policy {random_return:.1f}.", "",
             f"| grid | cells | mean return | % of expert | worst cell | worst return | % of expert | "
             f"cells >= {target} of expert |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s['cells']} | {s['mean_return']:.1f} | "
                     f"{of_expert(s['mean_return'])} | "
                     f"{s['worst_cell']} | {s['worst_return']:.1f} | {of_expert(s['worst_return'])} | "
                     f"{percent(s.get('fraction_at_target'))} |")
    if own_init:
        lines += ["", f"The init the dataset was distilled for ({Path(own_init['init']).name}, "
                      f"{'-'.join(map(str, own_init['hidden']))} {own_init['activation']}, the recipe, NumPy trainer): "
                      f"{own_init['mean_return']:.1f} ({of_expert(own_init['mean_return'])})."]
    for grid in dict.fromkeys(c["grid"] for c in cells):
        subset = [c for c in cells if c["grid"] == grid]
        for factor, rows in _varied(subset):
            name = factor.replace("_", " ")
            lines += ["", f"{grid} grid by {name} (over every other factor):", "",
                      f"| {name} | mean return | % of expert | worst cell |", "|---|---:|---:|---:|"]
            lines += [f"| {value} | {mean:.1f} | {of_expert(mean)} | {worst:.1f} |"
                      for value, mean, worst in rows]
    worst = sorted(cells, key=lambda c: c["mean_return"])[:10]
    lines += ["", "The worst cells:", "", "| cell | return (per init) | % of expert |", "|---|---|---:|"]
    lines += [f"| {_label(c)} | {c['mean_return']:.1f} ({', '.join(f'{r:.0f}' for r in c['returns'])}) | "
              f"{of_expert(c['mean_return'])} |" for c in worst]
    return "\n".join(lines)


def _plot(cells: list[dict], path: Path, title: str, expert_return: float | None, target_share: float,
          random_return: float) -> None:
    grids = {grid: [c for c in cells if c["grid"] == grid] for grid in dict.fromkeys(c["grid"] for c in cells)}
    varied = {grid: _varied(subset) or [(FACTORS[0], _marginals(subset, FACTORS[0]))] for grid, subset in grids.items()}
    columns = max(len(v) for v in varied.values())
    fig, axes = subplots(len(grids), columns, figsize=(3 * columns, 2.8 * len(grids)), squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)
    for row, grid in zip(axes, grids):
        for ax, (factor, marginals) in zip(row, varied[grid]):
            ax.set_visible(True)
            positions = np.arange(len(marginals))
            ax.bar(positions, [m for _, m, _ in marginals], color="C0", label="mean over cells")
            ax.scatter(positions, [w for _, _, w in marginals], color="C3", marker="v", zorder=3, label="worst cell")
            if positive_reference(expert_return):
                ax.axhline(target_share * expert_return, color="k", lw=0.8, ls="--",
                           label=f"{target_share:.0%} of expert")
            ax.axhline(random_return, color="grey", lw=0.8, ls=":", label="random policy")
            ax.set_xticks(positions, [f"{v:g}" if isinstance(v, float) else str(v) for v, _, _ in marginals],
                          fontsize=7)
            ax.set_title(f"{grid}: {factor.replace('_', ' ')}", fontsize=9)
    axes[0][0].set_ylabel("return")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def generalise(dataset_path: str | Path, env_id: str, out_dir: str | Path | None = None, progress: bool = True,
               **settings) -> dict:
    """Run the grid on a dataset (`settings`: GeneraliseConfig's fields) and write the reports
    into `out_dir` (default: the dataset's folder / generalise); returns the summary."""
    torch.set_num_threads(1)
    cfg = from_dict(GeneraliseConfig, settings, "generalise")
    source = Path(dataset_path)
    dataset = load_dataset(source, env_id=env_id)
    folder = source if source.is_dir() else source.parent
    expert_return = cfg.expert_return or dataset.meta.get("expert_return")
    masks = ondevice.read_mask(cfg.mask, dataset.env_id, dataset.obs_dim, dataset.act_dim) if cfg.mask else None
    out = prepare_output_dir(out_dir or folder / "generalise")
    init_path = folder / "policy_init.npz"
    with PopulationEvaluator(env_id, workers=cfg.workers) as evaluator:
        cells = _dense_cells(dataset, cfg, evaluator, progress)
        if masks is not None:
            cells += _mask_cells(dataset, masks, cfg, evaluator)
        own_init = _own_init(dataset, init_path, cfg, evaluator) if init_path.exists() else None
    for cell in cells:
        cell["mean_return"] = float(np.mean(cell["returns"]))
        cell["returns"] = [round(float(r), 1) for r in cell["returns"]]  # for the reports; the mean is exact
        cell["share_of_expert"] = share_of(cell["mean_return"], expert_return)
    random_return = float(random_policy_returns(env_id, RANDOM_BASELINE_EPISODES, RETRAINED_EVAL_SEED).mean())
    summaries = {grid: summarise([c for c in cells if c["grid"] == grid], expert_return, cfg.target_share)
                 for grid in dict.fromkeys(c["grid"] for c in cells)}
    recipe = dataset.recipe
    reference = [c for c in cells if c["grid"] == "dense" and c["hidden"] == recipe.hidden
                 and c["activation"] == recipe.activation and c["lr"] == recipe.lr and c["bc_steps"] == recipe.steps]

    write_csv(out / "generalise.csv", COLUMNS,
              ({**c, "hidden": "-".join(map(str, c["hidden"])), "returns": " ".join(map(str, c["returns"])),
                "share_of_expert": "" if c["share_of_expert"] is None else f"{c['share_of_expert']:.4f}"}
               for c in cells))
    table = _markdown(dataset, cfg, summaries, cells, expert_return, random_return, own_init)
    write_text(out / "generalise.md", table + "\n")
    _plot(cells, out / "generalise.png", f"{env_id}, D={dataset.size}: retrained from fresh inits",
          expert_return, cfg.target_share, random_return)
    summary = {"env_id": env_id, "dataset": str(dataset_path), "dataset_sha256": dataset.sha256,
               "settings": {k: v for k, v in vars(cfg).items()}, "expert_return": expert_return,
               "target_share": cfg.target_share, "random_policy_return": random_return, "summary": summaries,
               "recipe_cell": reference[0] if reference else None, "own_init": own_init,
               "cells": cells, "table": table, "out": str(out)}
    write_json(out / "generalise.json", summary)
    return summary
