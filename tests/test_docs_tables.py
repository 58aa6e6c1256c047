"""The table entry points that print docs/BENCHMARKS.md's tables from the committed raw files."""
from __future__ import annotations

import pytest

from benchmarks import ray_distill, reliability, retrain, train_speed


def _table(capsys, module, *args: str) -> list[str]:
    assert module.main(["table", *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_train_speed_table(capsys):
    lines = _table(capsys, train_speed)
    assert lines[0] == "| algo | run | SB3 | floor fp32 | hand-written fp32 | dense fp32 | RLx2 fp32 |"
    assert lines[2] == "| TD3 | a | 139.4 | 2.24x | 1.81x | 1.56x | 1.29x* |"  # * a slow chunk of RLx2
    assert lines[4] == "| SAC | a | 82.3 | 2.40x | - | 1.60x | 1.40x |"  # no hand-written SAC


def test_ray_table(capsys):
    lines = _table(capsys, ray_distill)
    assert lines[0].startswith("| backend | rollout workers | s / generation |")
    assert lines[3] == "| local processes | 2 | 2.02 | 1.64 | 0.37 |"


def test_reliability_table_counts_the_cases(capsys):
    lines = _table(capsys, reliability)
    counts = reliability.bad_input_counts()
    assert lines[0] == "| command | cases | | command | cases |"
    cells = [cell.strip() for line in lines[2:] for cell in line.strip("|").split("|")]
    assert sum(int(cell) for cell in cells[1::5] + cells[4::5] if cell) == counts["total"]
    first = min(counts["by_command"].items(), key=lambda item: (-item[1], item[0]))  # most cases, then by name
    assert lines[2].startswith(f"| {first[0]} | {first[1]} | |")


def test_retrain_tables(capsys):
    assert _table(capsys, retrain, "time")[2] == "| expert 225k | 0.044 s | 0.77 s | 8.97 s | not measured |"
    returns = _table(capsys, retrain, "returns")
    assert returns[4] == "| HaDES-F, fresh inits | 46.7 +- 41.9 | 63.1 +- 103.5 | -16.3 (37.2) |"
    assert returns[5].startswith("| HaDES-F, its fixed init | 1014.1 | 1014.4 |")
    mask = _table(capsys, retrain, "mask")
    assert mask[3] == "| expert 100k | 484.2 +- 150.6 | 506.0 +- 175.6 | 445.0 +- 160.7 | 773.5 |"


def test_hades_1h_tables(capsys):
    history = _table(capsys, retrain, "hades-history")
    assert history[0] == "| generation | 0 | 50 | 100 | 200 | 300 | 400 | 500 | 629 |"
    assert history[3] == "| population mean fitness | 354 | 1,707 | 2,101 | 2,513 | 2,613 | 2,888 | 2,700 | 2,822 |"
    retrained = _table(capsys, retrain, "hades-retrained")
    assert retrained[3] == ("| from the shipped init, **NumPy on-device retrainer** -> ONNX, 10 episodes | **3,096.7** "
                            "| **102%** |")
    halved = _table(capsys, retrain, "hades-retrained", "--expert-return", "6000")
    assert halved[3].endswith("| **52%** |")


def test_hades_tables_need_three_files(capsys):
    with pytest.raises(SystemExit):
        retrain.main(["table", "hades-history", str(retrain.HADES_1H[0])])
