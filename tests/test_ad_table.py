"""benchmarks.ad_table: the Algorithm Distillation tables of docs/BENCHMARKS.md from the committed curves."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.ad_table import main

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
DARK_ROOM_EPISODES = "10,25,50,75,100,150,200,300,400,500"


def test_key_to_door_table_is_the_committed_curves_md(capsys):
    assert main([str(RESULTS / "ad_k2d_v2")]) == 0
    out = capsys.readouterr().out
    assert out == (RESULTS / "ad_k2d_v2" / "curves.md").read_text()
    lines = out.splitlines()
    assert lines[0].startswith("| curve | ep. 1 | ep. 10 |") and lines[0].endswith("| mean 1-100 | mean last 50 |")
    assert lines[2] == "| ad | 0.35 | 0.50 | 0.78 | 0.80 | 0.93 | 0.93 | 0.95 | 0.95 | 0.87 | 0.73 | 0.87 |"


def test_dark_room_table_holds_ten_episode_means(capsys):
    assert main([str(RESULTS / "ad_curves.json"), "--mean-of", "10", "--episodes", DARK_ROOM_EPISODES]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| episode | 10 | 25 | 50 | 75 | 100 | 150 | 200 | 300 | 400 | 500 |"
    # the mean of episodes 1-10 (6.23 is episode 10 alone); the last cell bold
    assert lines[2] == ("| **AD (held-out goals)** | 3.39 | 10.02 | 13.49 | 13.96 | 14.11 | 14.29 | 14.56 | 15.41 "
                        "| 15.28 | **15.02** |")
    assert lines[3] == "| ED (held-out goals) | 2.32 | 2.20 | 1.95 | 2.40 | 1.85 | 2.34 | | | | |"
    assert [line.split(" | ")[0] for line in lines[4:]] == [
        "| source: Q-learning", "| random", "| optimal", "| AD on 16 training goals", "| AD, window 10 (< 1 episode)",
        "| AD, context cleared each episode"]


def test_mean_of_needs_its_episodes(capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(RESULTS / "ad_curves.json"), "--mean-of", "10"])
    assert exc.value.code == 2 and "go together" in capsys.readouterr().err
