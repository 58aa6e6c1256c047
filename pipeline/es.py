"""OpenAI-ES pieces used by HaDES: antithetic noise, the search-gradient estimate, fitness
shaping, and Adam on the search mean (HaDES spec sec. 1-2). NumPy only, float64."""
from __future__ import annotations

import numpy as np

SHAPINGS = ("raw", "centred-rank")


def antithetic_noise(rng: np.random.Generator, population: int, dim: int) -> np.ndarray:
    """[z_1..z_{N/2}, -z_1..-z_{N/2}], z ~ N(0, I): member i and i + N/2 are a mirrored pair."""
    if population % 2:
        raise ValueError(f"antithetic sampling needs an even population, got {population}")
    half = rng.standard_normal((population // 2, dim))
    return np.concatenate([half, -half])


def centred_ranks(fitness: np.ndarray) -> np.ndarray:
    """Ranks mapped linearly onto [-0.5, 0.5] (ties broken by order)."""
    ranks = np.empty(len(fitness))
    ranks[np.argsort(fitness, kind="stable")] = np.arange(len(fitness))
    return ranks / (len(fitness) - 1) - 0.5


def shape_fitness(fitness: np.ndarray, shaping: str) -> np.ndarray:
    if shaping == "raw":
        return np.asarray(fitness, dtype=np.float64)
    if shaping == "centred-rank":
        return centred_ranks(np.asarray(fitness))
    raise ValueError(f"unknown fitness shaping {shaping!r}; choose from {SHAPINGS}")


def es_gradient(noise: np.ndarray, fitness: np.ndarray, sigma: float) -> np.ndarray:
    """Estimate of the gradient of -E[f(mu + sigma eps)] w.r.t. mu: -(1 / (N sigma)) sum_i eps_i f_i."""
    return -(noise.T @ fitness) / (len(fitness) * sigma)


class Adam:
    """Adam for minimising with a given gradient; its state is three arrays and a step count."""

    def __init__(self, dim: int, lr: float, beta1: float = 0.99, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = np.zeros(dim)
        self.v = np.zeros(dim)
        self.t = 0

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad ** 2
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        return params - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
