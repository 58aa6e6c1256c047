import torch

from export.flops import inference_flops, training_flops_per_step, weight_count
from models import DeterministicActor, TwinCritic
from pipeline.train import sparsify


def test_counts_follow_masks():
    actor = DeterministicActor(11, 3, [256, 256], [-1.0] * 3, [1.0] * 3)
    dense = inference_flops(actor, sparse=False)
    assert dense == 2 * (11 * 256 + 256 * 256 + 256 * 3) + (256 + 256 + 3)
    sparsify(actor, 0.98, False, torch.Generator().manual_seed(0))
    assert weight_count(actor) == 1382 and weight_count(actor, sparse=False) == 69120
    assert inference_flops(actor) == 2 * 1382 + (256 + 256 + 3)
    assert inference_flops(actor, sparse=False) == dense


def test_training_flops_ratio_matches_paper_hopper():
    actor = DeterministicActor(11, 3, [256, 256], [-1.0] * 3, [1.0] * 3)
    critic = TwinCritic(11, 3, [256, 256])
    generator = torch.Generator().manual_seed(0)
    sparsify(actor, 0.98, False, generator)
    sparsify(critic, 0.95, False, generator)
    ratio = training_flops_per_step(actor, critic, 2) / training_flops_per_step(actor, critic, 2, sparse=False)
    assert 0.040 < ratio < 0.050  # paper: 0.043 (biases counted here too)
