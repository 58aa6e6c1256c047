"""Embedded targets: the exported C actor built into firmware with real cross toolchains,
measured and run under QEMU.

For each target the bundle's kernels (sparse `tp_actor` in actor.c, the dense reference
`tp_actor_dense` in actor_dense.c and the int8 sparse `tp_actor_int8` in actor_int8.c)
are each linked with the harness in export/embedded_c/, and one more build links the
harness alone. Everything is compiled with -Wall -Wextra -Werror -pedantic:

- Footprint (exact): `size -B` of each build, flash = text + data and RAM = data + bss;
  the harness-only build is subtracted for the model's share, and the kernel call's stack
  high-water mark (painted stack, measured under QEMU) is added to its RAM. Cortex-M
  builds use a linker script with the part's flash and RAM sizes (stack and heap
  reserved), so an actor too big for the part fails to link.
- Parity: the firmware runs under QEMU (Cortex-M: `qemu-system-arm` on an MPS2 board with
  semihosting for file I/O; aarch64: `qemu-aarch64`) on a fixed set of observations, and
  its actions are compared with ONNX Runtime on the bundle's actor.onnx (the int8 kernel:
  on actor.int8.onnx, within one quantisation step of the actions).
- Instructions per inference (exact): a TCG plugin (export/embedded_c/insn_count_plugin.c,
  built here with the host compiler) counts every executed guest instruction between the
  harness's two marker functions; an empty window's count is subtracted. Divided by the
  multiply-accumulates the kernel stands for (nonzero MACs for the sparse kernels, all
  MACs for the dense one), it gives instructions per MAC, activations and scaling included.
- Cycles and microseconds are estimates only: instructions times an assumed range of
  cycles per instruction at the part's clock, the assumption stated next to them.

    report = embedded_report("artifacts/Hopper-v5/export", "cortex-m4")
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinypolicy.export.bundle import FILES, PARITY_TOLERANCE, load_bundle
from tinypolicy.export.c_codegen import KERNELS, WARNINGS, int8_output_step, int8_parity_tolerance, int8_steps_apart
from tinypolicy.export.runtimes import ort_actions, ort_session
from tinypolicy.export.settings import TARGETS, Target
from tinypolicy.ondevice.artefact import prepare_output_dir, write_json, write_text
from tinypolicy.ondevice.errors import UserError

# The ONNX model each kernel is checked against, and which MAC count it stands for.
REFERENCE = {"sparse": "onnx", "dense": "onnx", "int8": "onnx_int8"}
MACS = {"sparse": "nonzero", "dense": "dense", "int8": "nonzero"}
PARITY_OBSERVATIONS = 16
QEMU_TIMEOUT_S = 300
APT_PACKAGES = ("gcc gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm qemu-user "
                "gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
CORTEX_M_HEAP_BYTES = 4 * 1024    # newlib-nano stdio buffers for the semihosted files
CORTEX_M_STACK_BYTES = 16 * 1024


def _data_file(name: str) -> Path:
    return Path(str(resources.files("tinypolicy.export").joinpath("embedded_c", name)))


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def missing_tools(target: str) -> list[str]:
    """Executables `target` needs that are not on PATH (empty when all are there)."""
    t = TARGETS[target]
    tools = [f"{t.prefix}gcc", f"{t.prefix}size", f"{t.prefix}nm", t.qemu[0], "cc"]
    return [tool for tool in tools if shutil.which(tool) is None]


# --- the bundle -------------------------------------------------------------------------

@dataclass(frozen=True)
class ActorSources:
    directory: Path
    obs_dim: int
    act_dim: int
    parity_threshold: float  # export's: 1e-5, or more where float32 round-off itself is larger
    int8_step: float         # one quantisation step of actor.int8.onnx's actions (0: not quantised)
    macs: dict               # dense, structural and nonzero multiply-accumulates


def read_bundle(bundle_dir: Path) -> tuple[ActorSources, np.ndarray]:
    """The bundle's C actor and a fixed set of its recorded observations: PARITY_OBSERVATIONS
    rows evenly spaced through observations.npy, so both rollout and extreme observations
    (export puts the extremes last) are covered."""
    manifest = load_bundle(bundle_dir)  # refuses incomplete or modified bundles
    folder = Path(manifest["dir"]).resolve()  # the tools run in build directories
    recorded = np.load(folder / FILES["observations"], allow_pickle=False)
    rows = np.unique(np.linspace(0, len(recorded) - 1, PARITY_OBSERVATIONS).round().astype(int))
    threshold = float(manifest["parity"].get("failure_threshold", PARITY_TOLERANCE))
    step = int8_output_step(folder / FILES["onnx_int8"])
    return (ActorSources(folder, int(manifest["obs_dim"]), int(manifest["act_dim"]), threshold, step,
                         dict(manifest["macs"])), recorded[rows])


# --- building ---------------------------------------------------------------------------

def _linker_script(target: Target, out: Path) -> Path:
    text = _data_file("cortex_m.ld").read_text()
    for key, value in (("TP_FLASH_BYTES", target.flash_kib * 1024), ("TP_RAM_BYTES", target.ram_kib * 1024),
                       ("TP_HEAP_BYTES", CORTEX_M_HEAP_BYTES), ("TP_STACK_BYTES", CORTEX_M_STACK_BYTES)):
        text = text.replace(key, str(value))
    path = out / "part.ld"
    path.write_text(text)
    return path


def compile_flags(target: Target) -> list[str]:
    # ISO C99 would turn off contraction into fused multiply-adds (VFMA on Cortex-M4/M7).
    common = ["-std=c99", "-O2", "-ffp-contract=fast", "-ffunction-sections", "-fdata-sections", *WARNINGS,
              f"-DTP_STACK_WINDOW={target.stack_window}"]
    return [*target.cflags, *common]


def _memory_capacity(target: Target) -> str:
    return (f"{target.flash_kib} KiB flash, {target.ram_kib} KiB RAM of which {CORTEX_M_STACK_BYTES // 1024} KiB "
            f"stack and {CORTEX_M_HEAP_BYTES // 1024} KiB heap are reserved")


def build_firmware(target: Target, sources: ActorSources, kernel: str | None, out: Path) -> tuple[Path, list[str]]:
    """Compile and link the harness with `kernel` ("sparse", "dense" or None for the
    harness alone). Returns the ELF and the linker's memory-usage lines; an actor too big
    for the part raises UserError naming the overflowing regions."""
    elf = out / f"{kernel or 'harness'}.elf"
    cmd = [f"{target.prefix}gcc", *compile_flags(target), f"-I{sources.directory}",
           str(_data_file("harness.c"))]
    if kernel:
        cmd += [f"-DTP_KERNEL={KERNELS[kernel].function}", str(sources.directory / KERNELS[kernel].source)]
    if target.bare_metal:
        cmd += [str(_data_file("startup_cortex_m.c")), "-T", str(_linker_script(target, out)), "-nostartfiles",
                "--specs=nano.specs", "--specs=rdimon.specs", "-Wl,--print-memory-usage"]
    else:
        cmd += ["-static"]
    cmd += ["-Wl,--gc-sections", "-lm", "-o", str(elf)]
    proc = _run(cmd, out, timeout=600)
    if proc.returncode != 0:
        overflows = re.findall(r"region `(\w+)' overflowed by (\d+) bytes", proc.stderr)
        if overflows:
            regions = ", ".join(f"{region} overflowed by {int(n):,} bytes" for region, n in overflows)
            raise UserError(f"the {kernel} actor does not fit the {target.part.split(' (')[0]} ({target.name}): "
                            f"{regions} ({_memory_capacity(target)})")
        errors = [line for line in proc.stderr.splitlines() if "error" in line] or proc.stderr.splitlines()[-1:]
        raise UserError(f"{target.prefix}gcc failed building the {kernel or 'harness'} firmware: "
                        f"{errors[0] if errors else 'no output'}")
    usage = [line.strip() for line in proc.stdout.splitlines() if re.match(r"\s*(FLASH|RAM):", line)]
    return elf, usage


def section_sizes(target: Target, elf: Path) -> dict[str, int]:
    """`size -B`: text (code + read-only data), data (initialised), bss (zeroed, NOLOAD)."""
    proc = _run([f"{target.prefix}size", "-B", "-d", str(elf)], elf.parent)
    text, data, bss = (int(x) for x in proc.stdout.splitlines()[1].split()[:3])
    return {"flash_bytes": text + data, "static_ram_bytes": data + bss}


def symbol_address(target: Target, elf: Path, symbol: str) -> int:
    proc = _run([f"{target.prefix}nm", str(elf)], elf.parent)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == symbol:
            return int(parts[0], 16) & ~1  # Thumb symbols carry the mode in bit 0
    raise RuntimeError(f"{symbol} not found in {elf}")


def build_plugin(out: Path) -> Path:
    plugin = out / "insn_count_plugin.so"
    proc = _run(["cc", "-O2", "-shared", "-fPIC", "-o", str(plugin), str(_data_file("insn_count_plugin.c"))], out)
    if proc.returncode != 0:
        raise RuntimeError(f"building the QEMU plugin failed: {proc.stderr.strip()}")
    return plugin


# --- running ----------------------------------------------------------------------------

@dataclass
class RunResult:
    actions: np.ndarray
    window_instructions: list[int]   # the empty calibration window first, then one per observation
    stack_bytes: int


def run_firmware(target: Target, elf: Path, plugin: Path, observations: np.ndarray, act_dim: int) -> RunResult:
    """Run `elf` under QEMU on `observations` (in its own directory: semihosting and Linux
    file I/O are relative to the emulator's working directory)."""
    work = elf.parent / f"{elf.stem}.run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    observations.astype("<f4").tofile(work / "obs.bin")
    counts = work / "instructions.txt"
    begin, end = (symbol_address(target, elf, s) for s in ("tp_window_begin", "tp_window_end"))
    cmd = [*target.qemu, "-plugin", f"{plugin},begin={begin:#x},end={end:#x},out={counts}"]
    if target.bare_metal:
        cmd += ["-nographic", "-monitor", "none", "-serial", "none",
                "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]
    else:
        cmd.append(str(elf))
    try:
        proc = _run(cmd, work, timeout=QEMU_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(cmd[:3])} did not finish {elf.name} in {QEMU_TIMEOUT_S} s") from None
    match = re.search(r"harness: inferences (\d+) stack_bytes (-?\d+)", proc.stdout)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"{elf.name} under {target.qemu[0]} exited {proc.returncode}: "
                           f"{(proc.stdout + proc.stderr).strip()[-500:]}")
    if int(match.group(1)) != len(observations):
        raise RuntimeError(f"{elf.name} ran {match.group(1)} of {len(observations)} observations")
    actions = np.fromfile(work / "actions.bin", dtype="<f4").reshape(len(observations), act_dim)
    windows = [int(x) for x in counts.read_text().split()]
    if len(windows) != len(observations) + 1:
        raise RuntimeError(f"the instruction-count plugin saw {len(windows)} windows, expected {len(observations) + 1}")
    stack = int(match.group(2))
    if stack < 0:
        raise RuntimeError(f"{elf.name}: the kernel used the whole {target.stack_window}-byte stack window")
    return RunResult(actions, windows, stack)


# --- the report -------------------------------------------------------------------------

def _tool_version(cmd: str) -> str:
    return _run([cmd, "--version"], Path.cwd()).stdout.splitlines()[0].strip()


def _estimate(target: Target, instructions: float) -> dict:
    low, high = target.cpi
    cycles = [instructions * low, instructions * high]
    return {"cycles": [round(c) for c in cycles],
            "microseconds": [round(c / target.clock_mhz, 2) for c in cycles],
            "clock_mhz": target.clock_mhz,
            "assumption": f"ESTIMATE, not measured: median instructions x {low}-{high} cycles per instruction "
                          f"at {target.clock_mhz:g} MHz ({target.cpi_note})"}


def _parity(kernel: str, sources: ActorSources, diff: np.ndarray, observations: int) -> dict:
    if kernel == "int8":
        step, worst = sources.int8_step, float(diff.max())
        tolerance = int8_parity_tolerance(step)
        return {"ok": worst <= tolerance, "max_abs_diff": worst, "tolerance": tolerance,
                "max_diff_in_steps": int8_steps_apart(worst, step), "observations": observations,
                "reference": "ONNX Runtime on actor.int8.onnx",
                "tolerance_source": ("one quantisation step of actor.int8.onnx's actions" if step > 0 else
                                     "exact: actor.int8.onnx's actions are not quantised")}
    return {"ok": bool(diff.max() <= sources.parity_threshold), "max_abs_diff": float(diff.max()),
            "within_1e-5": bool(diff.max() <= PARITY_TOLERANCE), "tolerance": sources.parity_threshold,
            "observations": observations, "reference": "ONNX Runtime on actor.onnx",
            "tolerance_source": "the bundle's export parity threshold (1e-5, or 4x PyTorch's own "
                                "float32 round-off when that is larger)"}


def _kernel_report(target: Target, sources: ActorSources, kernel: str, out: Path, plugin: Path,
                   harness: dict, observations: np.ndarray, reference: np.ndarray) -> dict:
    try:
        elf, usage = build_firmware(target, sources, kernel, out)
    except UserError as exc:
        if kernel == "sparse":
            raise
        return {"fits": False, "message": str(exc)}  # a dense baseline (or int8) too big for the part is a result
    firmware = section_sizes(target, elf)
    run = run_firmware(target, elf, plugin, observations, sources.act_dim)
    calibration, *windows = run.window_instructions
    instructions = [w - calibration for w in windows]
    diff = np.abs(run.actions - reference)
    macs = sources.macs[MACS[kernel]]
    static_ram = firmware["static_ram_bytes"] - harness["static_ram_bytes"]
    return {
        "fits": True,
        "flash_bytes": firmware["flash_bytes"] - harness["flash_bytes"],
        "ram_bytes": static_ram + run.stack_bytes,
        "static_ram_bytes": static_ram,
        "stack_bytes": run.stack_bytes,
        "firmware": {**firmware, "elf": str(elf), "memory_usage": usage},
        "instructions": {
            "exact": True, "median": int(np.median(instructions)), "min": min(instructions),
            "max": max(instructions), "per_observation": instructions,
            "macs": macs, "macs_counted": MACS[kernel], "per_mac": round(float(np.median(instructions)) / macs, 3),
            "method": "QEMU TCG plugin count of executed guest instructions from the kernel call to its return "
                      f"(harness markers, {calibration} instructions, subtracted)"},
        "estimate": _estimate(target, float(np.median(instructions))),
        "parity": _parity(kernel, sources, diff, len(observations)),
    }


def embedded_report(bundle_dir: str | Path, target: str, observations: np.ndarray | None = None,
                    progress: bool = False) -> dict:
    """Build, size, run and check the bundle's C actor on `target` (a key of TARGETS).

    Firmware ELFs are kept in BUNDLE/embedded/TARGET/. Raises UserError when the bundle is
    incomplete, a tool is missing or the sparse actor does not fit the part."""
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    t = TARGETS[target]
    missing = missing_tools(target)
    if missing:
        raise UserError(f"{', '.join(missing)} not found; install the Debian packages with `make embedded-deps` "
                        f"(as root) or apt-get install --no-install-recommends {APT_PACKAGES}")
    sources, recorded = read_bundle(Path(bundle_dir))
    prepare_output_dir(sources.directory)  # the firmware goes into the bundle
    source = ("given by the caller" if observations is not None
              else f"{len(recorded)} rows evenly spaced through the bundle's observations.npy")
    if observations is None:
        observations = recorded
    observations = np.ascontiguousarray(observations, dtype=np.float32)
    if observations.ndim != 2 or observations.shape[1] != sources.obs_dim or not np.isfinite(observations).all():
        raise UserError(f"observations must be finite and shaped [n, {sources.obs_dim}], got {observations.shape}")
    references = {key: ort_actions(ort_session(sources.directory / FILES[key], fuse=False), observations)
                  for key in set(REFERENCE.values())}

    final = sources.directory / "embedded" / target
    out = final.with_name(f".{target}.tmp")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        with tqdm(total=2 + len(KERNELS), desc=f"embedded {target}", disable=not progress, unit="build") as bar:
            plugin = build_plugin(out)
            harness_elf, _ = build_firmware(t, sources, None, out)
            harness = section_sizes(t, harness_elf)
            bar.update(2)
            kernels = {}
            for kernel in KERNELS:
                kernels[kernel] = _kernel_report(t, sources, kernel, out, plugin, harness, observations,
                                                 references[REFERENCE[kernel]])
                bar.update()
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a failed build (a full disk, a tool's error) leaves no .tmp behind
        raise
    shutil.rmtree(final, ignore_errors=True)  # this command's own earlier report for this bundle and target
    out.rename(final)
    for k in kernels.values():
        if "firmware" in k:
            k["firmware"]["elf"] = str(final / Path(k["firmware"]["elf"]).name)

    sparse, dense = kernels["sparse"], kernels["dense"]
    report = {
        "target": target, "part": t.part,
        "memory_model": ("flash = text + data, RAM = data + bss (size -B) plus the kernel call's measured stack; "
                         "model = firmware minus the harness-only build"
                         + (f"; firmware RAM includes the {CORTEX_M_STACK_BYTES // 1024} KiB stack and "
                            f"{CORTEX_M_HEAP_BYTES // 1024} KiB heap the linker script reserves" if t.bare_metal
                            else "; a static Linux binary, no memory limit checked")),
        "compiler": _tool_version(f"{t.prefix}gcc"), "cflags": compile_flags(t),
        "emulator": f"{' '.join(t.qemu)} ({_tool_version(t.qemu[0])})",
        "observations": {"count": len(observations), "source": source},
        "harness_only": harness,
        "kernels": kernels,
    }
    if dense["fits"]:
        report["dense_over_sparse"] = {
            "flash": round(dense["flash_bytes"] / sparse["flash_bytes"], 2),
            "instructions": round(dense["instructions"]["median"] / sparse["instructions"]["median"], 2)}
    return report


def write_embedded_json(bundle_dir: str | Path, reports: list[dict]) -> Path:
    """Merge `reports` (one per target) into BUNDLE/embedded.json, atomically."""
    path = Path(bundle_dir) / "embedded.json"
    merged = {}
    if path.exists():
        try:
            merged = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            merged = {}  # a damaged earlier file is replaced: every entry can be re-measured
    merged.update({r["target"]: r for r in reports})
    write_json(path, merged)
    return path


EMBEDDED_HEADING = "## Embedded targets"


def _per_mac(kernel: dict) -> str:
    counts = kernel["instructions"]
    # embedded.json merges reports of earlier runs, which may predate this figure
    return f"{counts['per_mac']:.2f} ({counts['macs_counted']})" if "per_mac" in counts else ""


def markdown_section(reports: dict) -> str:
    """The bench report's section for `reports` (embedded.json's content: target -> report)."""
    lines = [EMBEDDED_HEADING, "",
             "Flash and RAM are the model's share (firmware minus the harness alone, plus the call's stack); "
             "instructions per inference are exact counts under QEMU (median over the parity observations); "
             "µs are estimates from an assumed cycles per instruction, see embedded.json.", "",
             "| target | kernel | flash KiB | RAM KiB | instructions / inference | instructions / MAC | µs (estimate) "
             "| max abs diff vs ORT |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for target, report in reports.items():
        for name, k in report["kernels"].items():
            if not k["fits"]:
                lines.append(f"| {target} | {name} | does not fit | | | | | |")
                continue
            est = k["estimate"]["microseconds"]
            lines.append(f"| {target} ({report['part'].split(' (')[0]}) | {name} | {k['flash_bytes'] / 1024:.1f} | "
                         f"{k['ram_bytes'] / 1024:.2f} | {k['instructions']['median']:,} | "
                         f"{_per_mac(k)} | {est[0]:.0f}-{est[1]:.0f} | "
                         f"{k['parity']['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def update_bench_report(markdown_path: str | Path, bundle_dir: str | Path) -> None:
    """Replace (or add) the embedded section of a bench report with BUNDLE/embedded.json's
    results; does nothing when either file is missing."""
    path, results = Path(markdown_path), Path(bundle_dir) / "embedded.json"
    if not (path.is_file() and results.is_file()):
        return
    text = path.read_text()
    if EMBEDDED_HEADING in text:
        text = text[:text.index(EMBEDDED_HEADING)]
    text = text.rstrip("\n") + "\n\n" + markdown_section(json.loads(results.read_text()))
    write_text(path, text)


def summary_lines(report: dict) -> list[str]:
    """A few human-readable lines per target for the CLI."""
    lines = [f"{report['target']}: {report['part']}"]
    for name, k in report["kernels"].items():
        if not k["fits"]:
            lines.append(f"  {name:6} does not fit: {k['message']}")
            continue
        est = k["estimate"]
        lines.append(
            f"  {name:6} flash {k['flash_bytes'] / 1024:7.1f} KiB  RAM {k['ram_bytes'] / 1024:5.1f} KiB  "
            f"{k['instructions']['median']:>9,} instructions/inference (exact, "
            f"{k['instructions']['per_mac']:.2f} per {k['instructions']['macs_counted']} MAC)  "
            f"~{est['microseconds'][0]:g}-{est['microseconds'][1]:g} us (estimate)  "
            f"parity {'ok' if k['parity']['ok'] else 'FAILED'} (max |diff| {k['parity']['max_abs_diff']:.1e})")
    if "dense_over_sparse" in report:
        r = report["dense_over_sparse"]
        lines.append(f"  dense/sparse: flash {r['flash']:.1f}x, instructions {r['instructions']:.1f}x")
    return lines
