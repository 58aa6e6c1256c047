"""Settings of the export stages (`export`, `bench`, `embedded`) and the embedded targets.

Each stage's dataclass holds its defaults; the command line, compress's presets and the
stage functions' keyword defaults all come from it (tinypolicy.config). This module
imports no torch, so `tinypolicy --help` and the torch-free `retrain` command build every
command's flags from it.
"""
from __future__ import annotations

from dataclasses import dataclass

from tinypolicy.config import option
from tinypolicy.ondevice.flags import random_seed


# The embedded targets: what `tinypolicy embedded --target` offers and how each is built and run.
@dataclass(frozen=True)
class Target:
    name: str
    part: str                    # the real chip or board the memory sizes and clock are from
    prefix: str                  # binutils/gcc prefix
    cflags: tuple[str, ...]
    qemu: tuple[str, ...]        # emulator command before the plugin and the program
    clock_mhz: float
    cpi: tuple[float, float]     # assumed cycles per instruction, for the estimate only
    cpi_note: str
    flash_kib: int | None = None  # None: a Linux target, no link-time memory limit
    ram_kib: int | None = None
    stack_window: int = 12 * 1024  # bytes painted below the harness's frame

    @property
    def bare_metal(self) -> bool:
        return self.flash_kib is not None


_CORTEX_M_COMMON = ("-mthumb", "-mfloat-abi=hard")
TARGETS = {
    "cortex-m4": Target(
        "cortex-m4", "STM32F405 (Cortex-M4F, 1024 KiB flash, 192 KiB RAM, 168 MHz)", "arm-none-eabi-",
        ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", *_CORTEX_M_COMMON),
        ("qemu-system-arm", "-M", "mps2-an386"), 168.0, (1.2, 2.0),
        "single-issue M4F: 1-cycle ALU, 2-cycle loads, 3-cycle VFMA, branch refill; flash wait "
        "states assumed hidden by the ART accelerator",
        flash_kib=1024, ram_kib=192),
    "cortex-m7": Target(
        "cortex-m7", "STM32F746 (Cortex-M7 with single-precision FPU, 1024 KiB flash, 320 KiB RAM, 216 MHz)",
        "arm-none-eabi-", ("-mcpu=cortex-m7", "-mfpu=fpv5-sp-d16", *_CORTEX_M_COMMON),
        ("qemu-system-arm", "-M", "mps2-an500"), 216.0, (0.7, 1.5),
        "dual-issue M7 with caches warm; flash wait states assumed hidden by the ART/cache",
        flash_kib=1024, ram_kib=320),
    "aarch64": Target(
        "aarch64", "Raspberry Pi 4 (Cortex-A72, Linux, 1.5 GHz)", "aarch64-linux-gnu-",
        ("-mcpu=cortex-a72",), ("qemu-aarch64", "-cpu", "cortex-a72"), 1500.0, (0.5, 1.2),
        "out-of-order A72, weights in L2/L1 after the first call", stack_window=64 * 1024),
}


@dataclass
class ExportConfig:
    """`tinypolicy export` and compress's export stage."""
    parity_samples: int = option(10_000, "observations for the parity check (80%% rollouts, 20%% extremes)")
    episodes: int = option(5, "episodes for the int8 return")
    seed: int = option(0, metavar="K", parse=random_seed)


@dataclass
class BenchConfig:
    """`tinypolicy bench` and compress's bench stage."""
    calls: int = option(5_000, "timed calls per Python variant")
    c_calls: int = option(100_000, "calls timed inside C")
    rounds: int = option(5, "interleaved timing rounds")
    episodes: int = option(5)
    seed: int = option(1000, "seed of the first episode", metavar="K", parse=random_seed)


@dataclass
class EmbeddedConfig:
    """`tinypolicy embedded` and compress's embedded stage."""
    targets: tuple[str, ...] = option(
        tuple(TARGETS), "one or more of: " + "; ".join(f"{name} = {t.part}" for name, t in TARGETS.items()),
        flag="--target", metavar="TARGET", choices=TARGETS)
