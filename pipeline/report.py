"""The `compress` report: what the pipeline produced, as Markdown and self-contained HTML."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from tinypolicy.checkpoint import load_checkpoint
from tinypolicy.models import sparse_layers
from tinypolicy.models.flops import inference_flops, weight_count
from tinypolicy.pipeline.document import Document
from tinypolicy.plots import save_figure, subplots
from tinypolicy.shares import percent, share_of


def _plot_learning_curve(rows: list[dict], title: str, path: Path, xlabel: str = "env steps") -> None:
    steps = [int(r["step"]) for r in rows]
    mean = [float(r["eval_return"]) for r in rows]
    std = [float(r["eval_return_std"]) for r in rows]
    fig, ax = subplots(figsize=(6, 3.6))
    ax.plot(steps, mean, marker="o", markersize=3)
    ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set(title=title, xlabel=xlabel, ylabel="eval return")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def write_report(out: Path, folder: Path) -> None:
    ckpt = load_checkpoint(out / "train" / "checkpoint.pt")
    cfg = ckpt.config
    evaluation = json.loads((out / "evaluate" / "eval.json").read_text())
    teacher = _read(out / "train" / "teacher.json")  # compress --from: the policy it compressed
    actor = ckpt.build_actor()
    title = f"{cfg['env_id']}: {cfg['method']}-{cfg['algo']}, actor {1 - weight_count(actor) / weight_count(actor, False):.0%} sparse"
    if (out / "train" / "metrics.csv").exists():
        with (out / "train" / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        _plot_learning_curve(rows, title, folder / "learning_curve.png")
    else:  # a DAgger student: its return after each iteration, over the states labelled so far
        with (out / "train" / "iterations.csv").open() as f:
            rows = [{"step": r["dataset_size"], "eval_return": r["student_return"],
                     "eval_return_std": r["student_return_std"]} for r in csv.DictReader(f)]
        _plot_learning_curve(rows, title, folder / "learning_curve.png", xlabel="states labelled by the teacher")

    doc = Document(f"tinypolicy report: {cfg['env_id']}")
    origin = f" from {teacher['source']} ({teacher['method']})" if teacher else ""
    doc.paragraph(f"Training{origin}: {cfg['method']} {cfg['algo'].upper()}, {ckpt.steps_done:,} env steps, "
                  f"seed {cfg['seed']}, hidden {cfg['hidden']}.")
    doc.heading("Return")
    rows = [["sparse actor (deterministic)", f"{evaluation['mean_return']:.1f}", f"{evaluation['std_return']:.1f}"],
            ["random actions", f"{evaluation['random_mean_return']:.1f}", f"{evaluation['random_std_return']:.1f}"]]
    if teacher:
        rows.insert(1, ["teacher (the policy given to --from), same episodes", f"{teacher['mean_return']:.1f}",
                        f"{teacher['std_return']:.1f}"])
    doc.table(["policy", f"mean return over {evaluation['episodes']} episodes", "std"], rows)
    kept = share_of(evaluation["mean_return"], teacher["mean_return"]) if teacher else None
    if kept is not None:
        doc.paragraph(f"The compressed actor keeps {kept:.1%} of the teacher's return.")
    doc.image(folder / "learning_curve.png", "learning curve (evaluation return during training)")
    doc.heading("Actor sparsity per layer")
    doc.table(["layer", "shape (out x in)", "nonzero weights", "density"], [
        [index, f"{layer.out_features} x {layer.in_features}", f"{int(layer.mask.sum()):,}", f"{layer.density:.1%}"]
        for index, layer in enumerate(sparse_layers(actor))], align_right_from=2)
    doc.paragraph(f"Actor: {weight_count(actor):,} of {weight_count(actor, False):,} weights nonzero; "
                  f"{inference_flops(actor):,} FLOPs per action vs {inference_flops(actor, False):,} dense.")
    _export_section(doc, out, folder)
    _embedded_section(doc, out)
    _distill_section(doc, out, folder, evaluation["mean_return"])
    _retrain_section(doc, out, evaluation["mean_return"], cfg, teacher)
    doc.write(folder)


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _copy_image(source: Path, folder: Path, name: str) -> Path | None:
    """Images live beside the report (the Markdown links them, the HTML embeds them)."""
    if not source.exists():
        return None
    target = folder / name
    shutil.copyfile(source, target)
    return target


def _export_section(doc: Document, out: Path, folder: Path) -> None:
    bench = _read(out / "bench" / "bench.json")
    if bench is None:
        return
    macs, sizes = bench["macs"], bench["parameter_bytes"]
    doc.heading("Deployable actor: FLOPs, memory and latency on this CPU")
    doc.paragraph(f"Dead neurons removed: MACs per action {macs['dense']:,} dense, {macs['structural']:,} after "
                  f"neuron removal, {macs['nonzero']:,} nonzero. Parameter bytes: {sizes['dense_fp32']:,} dense fp32, "
                  f"{sizes['pruned_fp32']:,} pruned fp32, {sizes['sparse_fp32']:,} sparse (C kernel tables).")
    names = {"pytorch_eager": "PyTorch eager", "ort_dense": "ONNX Runtime, masked dense",
             "ort_pruned": "ONNX Runtime, pruned", "ort_int8": "ONNX Runtime, int8", "c_sparse": "C sparse kernel",
             "c_dense": "C dense kernel (vectorised)", "c_int8": "C int8 sparse kernel",
             "emx_dense": "emx-onnx-cgen (dense)"}
    doc.table(["variant", "batch-1 p50 (us)", "p99 (us)", "return"], [
        [label, f"{bench['latency'][key]['p50_us']:.2f}", f"{bench['latency'][key]['p99_us']:.2f}",
         f"{bench['returns'][key]['mean']:.1f}"] for key, label in names.items() if key in bench["returns"]])
    speed = bench["speedup"]["p50"]
    doc.paragraph(f"C sparse kernel: {speed['c_sparse_vs_fastest_dense']:.1f}x faster than the fastest dense variant "
                  f"({names.get(speed['fastest_dense'], speed['fastest_dense'])}), against an ideal of "
                  f"{speed['ideal']:.1f}x (dense MACs / nonzero MACs; measured side by side in one run; "
                  f"{bench['machine']['cpu']}).")
    image = _copy_image(out / "bench" / "bench.png", folder, "bench.png")
    if image:
        doc.image(image, "latency per variant")


def _embedded_section(doc: Document, out: Path) -> None:
    reports = _read(out / "embedded" / "embedded.json")
    stamp = _read(out / "embedded" / "stamp.json")
    skipped = stamp["summary"].get("skipped", {}) if stamp else {}
    if not reports and not skipped:
        return
    doc.heading("Embedded targets")
    if skipped:
        doc.paragraph("Skipped: " + "; ".join(f"{target}, {why}" for target, why in skipped.items()) + ".")
    if not reports:
        return
    rows = []
    for target, report in reports.items():
        for kernel, k in report["kernels"].items():
            if not k["fits"]:
                rows.append([target, kernel, "does not fit", "", "", ""])
                continue
            rows.append([target, kernel, f"{k['flash_bytes'] / 1024:.1f}", f"{k['ram_bytes'] / 1024:.2f}",
                         f"{k['instructions']['median']:,}", f"{k['parity']['max_abs_diff']:.1e}"])
    doc.table(["target", "kernel", "flash KiB", "RAM KiB", "instructions / inference (exact)",
               "max abs diff vs ONNX Runtime"], rows, align_right_from=2)


def _distill_section(doc: Document, out: Path, folder: Path, expert: float) -> None:
    summary = _read(out / "distill" / "summary.json")
    if summary is None:
        return
    dataset = _read(out / "distill" / "dataset.json")
    recipe, meta = dataset["recipe"], dataset["meta"]
    students = {"f": "one fixed init (HaDES-F)", "r": "a fresh init per candidate pair (HaDES-R)",
                "a": "a fresh init and architecture per candidate pair (architecture-randomised)"}[summary["mode"]]
    doc.heading(f"Distilled dataset (HaDES-{summary['mode'].upper()}, D = {summary['size']})")
    doc.paragraph(f"{summary['generations']} generations of population {summary['population']}, "
                  f"{summary['env_steps']:,} env steps, {summary['distill_seconds']:.0f} s, initialised from "
                  f"{summary['init']}; each candidate dataset trained {students}.")
    if "architectures" in meta:
        family, config = meta["architectures"], meta["config"]
        doc.paragraph(f"Architectures drawn: {len(family['dense'])} dense (widths "
                      f"{', '.join(map(str, config['arch_widths']))}; depths "
                      f"{', '.join(map(str, config['arch_depths']))}; {', '.join(config['arch_activations'])})"
                      + (f"; with probability {family['mask_share']:.0%} the exported actor's sparse topology "
                         f"({', '.join(family['masked'])})" if family["masked"] else "") + ".")
    recipe_arch = f"{'-'.join(map(str, recipe['hidden']))} {recipe['activation']}"
    rows = [[f"fresh inits (seeds {', '.join(map(str, summary['fresh_init_seeds']))})", recipe_arch,
             f"{summary['fresh_init_mean']:.1f}", percent(share_of(summary["fresh_init_mean"], expert))]]
    if "fixed_init_return" in summary:
        rows.append(["own init (the one it was distilled for)", recipe_arch, f"{summary['fixed_init_return']:.1f}",
                     percent(share_of(summary["fixed_init_return"], expert))])
    rows.append(["random actions", "", f"{summary['random_policy_return']:.1f}", ""])
    episodes = f"{summary['episodes']} episode{'s' * (summary['episodes'] > 1)}"
    doc.table(["retrained (torch inner loop) from", "architecture", f"return ({episodes} each)",
               "share of the expert"], rows, align_right_from=2)
    for source, name, caption in (("fitness.png", "fitness.png", "ES fitness per generation"),
                                  ("states.png", "states.png", "the synthetic states, rendered by MuJoCo")):
        image = _copy_image(out / "distill" / source, folder, name)
        if image:
            doc.image(image, caption)


def _retrain_section(doc: Document, out: Path, expert: float, cfg: dict, teacher: dict | None) -> None:
    """The retrained policies beside the expert the dataset was distilled from (the train stage's
    policy: trained here, or for compress --from the compressed one, shown with its teacher)."""
    retrained = _read(out / "retrain" / "retrain.json")
    if retrained is None:
        return
    if teacher:
        references = [[f"expert: the compressed policy, {teacher['method']} (for reference)", expert],
                      ["teacher: the policy given to --from (for reference)", teacher["mean_return"]]]
    else:
        references = [[f"expert: {cfg['method']} {cfg['algo'].upper()} (for reference)", expert]]
    doc.heading("Retrained on the distilled dataset on the device (NumPy, no simulator)")
    doc.table(["policy", "architecture", "started from", "training time (s)",
               "return (mean; per init)", "share of the expert"], [
        [name, r["architecture"], r["start"], f"{r['train_seconds']:.2f}",
         f"{r['mean_return']:.1f} ({', '.join(f'{x:.0f}' for x in r['returns'])})",
         percent(share_of(r["mean_return"], expert))]
        for name, r in retrained.items()] +
        [[label, "", "", "", f"{value:.1f}", ""] for label, value in references], align_right_from=3)
