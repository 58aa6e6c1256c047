"""HaDES on Ray: a local 2-CPU Ray instance gives exactly the local backend's fitness, at the
user's priority."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tinypolicy.models.bc import BCParams, init_params
from tinypolicy.pipeline.rollouts import PopulationEvaluator, RayPopulationEvaluator

pytestmark = pytest.mark.integration


def test_ray_rollouts_equal_local_rollouts_for_the_same_seeds():
    pytest.importorskip("ray")
    population = BCParams.stack([init_params(1, 11, 3, (16, 16), seed) for seed in range(6)]).numpy()
    mean, std = np.zeros(11, np.float32), np.ones(11, np.float32)
    seeds = np.arange(100, 106)
    with PopulationEvaluator("Hopper-v5", workers=2, max_steps=300) as local:
        expected = local.evaluate(population, "tanh", mean, std, seeds)
    with RayPopulationEvaluator("Hopper-v5", workers=2, max_steps=300) as on_ray:
        got = on_ray.evaluate(population, "tanh", mean, std, seeds)
        niceness = on_ray.ray.get(on_ray.ray.remote(num_cpus=0)(lambda: os.nice(0)).remote())
    assert niceness == os.nice(0)  # Ray's default, 15, starves its workers beside any busy process
    np.testing.assert_array_equal(got.returns, expected.returns)
    np.testing.assert_array_equal(got.lengths, expected.lengths)
    assert len(set(expected.returns.round(6))) > 1  # distinct members, not one policy six times
