"""ER layer densities, random initial masks, the RigL drop schedule and drop/grow updates,
the GMP schedule and magnitude pruning."""
from __future__ import annotations

import copy
import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from tinypolicy.models.sparse import SparseLinear, apply_masks, weight_sparsity
from tinypolicy.models.topology import (
    drop_fraction,
    er_densities,
    gmp_sparsity,
    layer_nnz,
    magnitude_prune,
    prune_to,
    random_masks,
    rigl_update,
)
from tinypolicy.pipeline.train import MaskedAdam


def _sizes(shapes):
    return [o * i for o, i in shapes]


# --------------------------------------------------------------------------- ER densities

HOPPER_ACTOR = [(256, 11), (256, 256), (3, 256)]
HOPPER_CRITIC_HEAD = [(256, 14), (256, 256), (1, 256)]
CHEETAH_ACTOR = [(256, 17), (256, 256), (6, 256)]


def test_er_hopper_td3_actor_matches_spec_table():
    d = er_densities(HOPPER_ACTOR, 0.98)
    for got, want in zip(d, [12.6, 1.0, 44.9]):
        assert abs(100 * got - want) <= 0.1, (d, want)
    nnz = layer_nnz(HOPPER_ACTOR, 0.98)
    assert sum(nnz) == 1382
    assert nnz == [355, 682, 345]


def test_er_hopper_critic_head_last_layer_dense_and_resolved():
    shapes, sparsity = HOPPER_CRITIC_HEAD, 0.95
    sizes = _sizes(shapes)
    # A single ER pass would give the output layer a density above 1 ...
    eps_one_pass = (1 - sparsity) * sum(sizes) / sum(o + i for o, i in shapes)
    assert eps_one_pass * (1 + 256) / 256 > 1.0
    d = er_densities(shapes, sparsity)
    # ... so it is made dense and eps is re-solved for the first two layers.
    assert d[2] == 1.0
    assert abs(100 * d[0] - 31.0) <= 0.1 and abs(100 * d[1] - 3.2) <= 0.1
    assert d[0] > eps_one_pass * (256 + 14) / (256 * 14)  # re-solve raised the others
    assert sum(x * n for x, n in zip(d, sizes)) == pytest.approx((1 - sparsity) * sum(sizes), rel=1e-12)
    # ER shape of the remaining layers: density ratio = ratio of (in+out)/(in*out).
    assert d[0] / d[1] == pytest.approx(((256 + 14) / (256 * 14)) / ((256 + 256) / (256 * 256)), rel=1e-12)
    nnz = layer_nnz(shapes, sparsity)
    assert nnz[2] == 256
    assert sum(nnz) == round(0.05 * sum(sizes)) == 3469


def test_er_halfcheetah_td3_actor_matches_spec_table():
    d = er_densities(CHEETAH_ACTOR, 0.9)
    for got, want in zip(d, [44.8, 5.6, 100.0]):
        assert abs(100 * got - want) <= 0.1, (d, want)
    assert d[2] == 1.0
    nnz = layer_nnz(CHEETAH_ACTOR, 0.9)
    assert sum(nnz) == 7142
    assert nnz[2] == 6 * 256


# Every row of the spec's Table (v3 obs/act sizes): (obs, act, actor out, S, densities %).
SPEC_ROWS = [
    # TD3 actors
    (17, 6, 6, 0.90, [44.8, 5.6, 100.0]),
    (11, 3, 3, 0.98, [12.6, 1.0, 44.9]),
    (17, 6, 6, 0.97, [12.8, 1.6, 34.9]),
    (111, 8, 8, 0.96, [4.3, 2.6, 43.3]),
    # SAC actors (2A outputs)
    (17, 6, 12, 0.90, [43.5, 5.4, 60.4]),
    (11, 3, 6, 0.98, [12.7, 1.0, 22.9]),
    (111, 8, 16, 0.90, [11.0, 6.7, 56.6]),
]
SPEC_CRITIC_ROWS = [
    (17 + 6, 0.85, [62.9, 10.4, 100.0]),
    (11 + 3, 0.95, [31.0, 3.2, 100.0]),
    (17 + 6, 0.95, [19.9, 3.3, 100.0]),
    (111 + 8, 0.88, [15.7, 9.9, 100.0]),
    (17 + 6, 0.80, [84.3, 13.9, 100.0]),
    (17 + 6, 0.90, [41.4, 6.8, 100.0]),
    (111 + 8, 0.75, [33.0, 21.0, 100.0]),
]


@pytest.mark.parametrize("obs,act,out,sparsity,table", SPEC_ROWS)
def test_er_actor_rows_of_spec_table(obs, act, out, sparsity, table):
    shapes = [(256, obs), (256, 256), (out, 256)]
    d = er_densities(shapes, sparsity)
    assert [round(100 * x, 1) for x in d] == pytest.approx(table, abs=0.1 + 1e-9)
    assert sum(layer_nnz(shapes, sparsity)) == round((1 - sparsity) * sum(_sizes(shapes)))


@pytest.mark.parametrize("inp,sparsity,table", SPEC_CRITIC_ROWS)
def test_er_critic_rows_of_spec_table(inp, sparsity, table):
    shapes = [(256, inp), (256, 256), (1, 256)]
    d = er_densities(shapes, sparsity)
    assert d[2] == 1.0
    assert [round(100 * x, 1) for x in d] == pytest.approx(table, abs=0.1 + 1e-9)


def test_layer_nnz_random_sweep():
    rng = np.random.default_rng(20240601)
    for _ in range(300):
        n_layers = int(rng.integers(1, 5))
        dims = [int(x) for x in rng.integers(1, 300, n_layers + 1)]
        shapes = [(o, i) for i, o in pairwise(dims)]
        sparsity = float(rng.uniform(0.0, 0.999))
        sizes = _sizes(shapes)
        d = er_densities(shapes, sparsity)
        assert all(0.0 <= x <= 1.0 for x in d), (shapes, sparsity, d)
        assert sum(x * n for x, n in zip(d, sizes)) == pytest.approx((1 - sparsity) * sum(sizes), rel=1e-9)
        nnz = layer_nnz(shapes, sparsity)
        assert len(nnz) == len(shapes)
        assert all(isinstance(n, int) for n in nnz)
        assert sum(nnz) == round((1 - sparsity) * sum(sizes)), (shapes, sparsity, nnz)
        for n, size, x in zip(nnz, sizes, d):
            assert 0 <= n <= size
            assert abs(n - x * size) < 1.0 + 1e-6, (shapes, sparsity, nnz, d)


def test_zero_sparsity_is_dense():
    shapes = [(64, 5), (64, 64), (2, 64)]
    assert er_densities(shapes, 0.0) == [1.0, 1.0, 1.0]
    assert layer_nnz(shapes, 0.0) == _sizes(shapes)


@pytest.mark.parametrize("bad", [-0.01, 1.0, 1.5, float("nan"), float("inf")])
def test_sparsity_out_of_range_raises(bad):
    with pytest.raises(ValueError):
        er_densities(HOPPER_ACTOR, bad)
    with pytest.raises(ValueError):
        layer_nnz(HOPPER_ACTOR, bad)


# --------------------------------------------------------------------------- random masks

def test_random_masks_exact_nnz_single_member():
    layers = [SparseLinear(11, 256), SparseLinear(256, 256), SparseLinear(256, 3)]
    random_masks(layers, 0.98, torch.Generator().manual_seed(0))
    for layer, nnz in zip(layers, [355, 682, 345]):
        assert int(layer.mask.sum()) == nnz
        assert set(layer.mask.unique().tolist()) <= {0.0, 1.0}
    assert weight_sparsity(torch.nn.ModuleList(layers)) == pytest.approx(1 - 1382 / 69120, abs=1e-12)


def test_random_masks_exact_nnz_per_ensemble_member():
    layers = [SparseLinear(14, 256, 2), SparseLinear(256, 256, 2), SparseLinear(256, 1, 2)]
    random_masks(layers, 0.95, torch.Generator().manual_seed(1))
    expected = layer_nnz(HOPPER_CRITIC_HEAD, 0.95)
    assert expected == [1109, 2104, 256]
    for layer, nnz in zip(layers, expected):
        assert layer.mask.shape == (2, layer.out_features, layer.in_features)
        assert layer.mask[0].sum().item() == nnz
        assert layer.mask[1].sum().item() == nnz
    # independent topologies for the two heads; the output layer is dense
    assert not torch.equal(layers[0].mask[0], layers[0].mask[1])
    assert bool(layers[2].mask.all())


def test_random_masks_deterministic_in_generator():
    def masks(seed):
        layers = [SparseLinear(8, 16), SparseLinear(16, 4)]
        random_masks(layers, 0.7, torch.Generator().manual_seed(seed))
        return [l.mask.clone() for l in layers]

    a, b, c = masks(3), masks(3), masks(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_apply_masks_zeroes_outside_mask():
    layer = SparseLinear(6, 5, 2)
    random_masks([layer], 0.6, torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.weight.fill_(3.0)
    apply_masks(layer)
    assert torch.equal(layer.weight.data, 3.0 * layer.mask)


# --------------------------------------------------------------------------- drop fraction

def test_drop_fraction_cosine_schedule():
    assert drop_fraction(0, 1000) == 0.5  # default zeta_0 = 0.5
    assert drop_fraction(0, 1000, 1.0) == 1.0
    assert drop_fraction(500, 1000, 1.0) == pytest.approx(0.5, abs=1e-12)
    assert drop_fraction(500, 1000, 0.5) == pytest.approx(0.25, abs=1e-12)
    assert drop_fraction(250, 1000, 0.5) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)), abs=1e-12)
    assert drop_fraction(750, 1000, 0.5) == pytest.approx(0.25 * (1 - math.cos(math.pi / 4)), abs=1e-12)
    assert drop_fraction(1000, 1000, 0.5) == 0.0
    assert drop_fraction(1001, 1000, 0.5) == 0.0
    assert drop_fraction(10**7, 1000, 0.5) == 0.0
    values = [drop_fraction(t, 1000, 0.5) for t in range(0, 1001, 50)]
    assert all(a > b for a, b in pairwise(values))


# --------------------------------------------------------------------------- RigL / SET updates

def _hand_layer():
    """3x4 layer (12 positions, flat index = row*4 + col) with 8 active weights."""
    layer = SparseLinear(4, 3)
    active = [0, 1, 2, 4, 5, 7, 9, 11]
    values = {0: 0.9, 1: -0.1, 2: 0.5, 4: -0.05, 5: 0.7, 7: 0.3, 9: -0.8, 11: 0.2}
    mask = torch.zeros(12)
    mask[active] = 1.0
    weight = torch.zeros(12)
    for pos, v in values.items():
        weight[pos] = v
    with torch.no_grad():
        layer.mask.copy_(mask.view(1, 3, 4))
        layer.weight.copy_(weight.view(1, 3, 4))
    grad = torch.zeros(12)
    # kept position 0 has the largest gradient: it must not count as a growth slot
    grad_values = {0: 100.0, 1: -5.0, 3: 2.0, 4: 0.1, 6: -1.0, 8: 3.0, 10: 0.5, 2: 50.0}
    for pos, v in grad_values.items():
        grad[pos] = v
    return layer, grad.view(1, 3, 4)


def test_rigl_update_hand_built_layer():
    layer, grad = _hand_layer()
    mask_tensor = layer.mask
    old_weight = layer.weight.detach().clone().view(-1)
    # 8 active, fraction 0.3 -> k = floor(2.4) = 2: drop |w|=0.05 (pos 4) and |w|=0.1 (pos 1).
    # Non-kept positions: 1, 3, 4, 6, 8, 10; largest |grad| there: pos 1 (5.0), pos 8 (3.0).
    changed = rigl_update(layer, grad, 0.3)
    new_mask = layer.mask.view(-1)
    assert layer.mask is mask_tensor  # updated in place (targets share this tensor)
    assert torch.nonzero(new_mask).flatten().tolist() == [0, 1, 2, 5, 7, 8, 9, 11]
    assert int(new_mask.sum()) == 8
    assert changed.dtype == torch.bool and changed.shape == layer.mask.shape
    assert torch.nonzero(changed.view(-1)).flatten().tolist() == [4, 8]
    w = layer.weight.detach().view(-1)
    assert w[1].item() == pytest.approx(-0.1)  # dropped then regrown: keeps its value
    assert w[8].item() == 0.0  # newly grown: starts at zero
    assert w[4].item() == 0.0  # dropped
    for pos in [0, 2, 5, 7, 9, 11, 1]:
        assert w[pos].item() == old_weight[pos].item()
    assert torch.equal(w, w * new_mask)


def test_rigl_update_fraction_below_one_weight_is_noop():
    layer, grad = _hand_layer()
    before_mask, before_w = layer.mask.clone(), layer.weight.detach().clone()
    changed = rigl_update(layer, grad, 0.1)  # floor(0.8) = 0
    assert not changed.any()
    assert torch.equal(layer.mask, before_mask) and torch.equal(layer.weight.detach(), before_w)


def test_rigl_update_dense_layer_is_noop():
    layer = SparseLinear(3, 2)
    before = layer.weight.detach().clone()
    changed = rigl_update(layer, torch.randn(1, 2, 3), 0.5)
    assert not changed.any()
    assert bool(layer.mask.all()) and torch.equal(layer.weight.detach(), before)


def _reference_rigl(weight, mask, grad, fraction):
    """Per member: keep the largest-|w| active weights, grow top-|grad| among the rest."""
    new_masks = []
    for e in range(weight.shape[0]):
        w, m, g = weight[e].ravel(), mask[e].ravel().astype(bool), grad[e].ravel()
        active = np.flatnonzero(m)
        k = math.floor(fraction * len(active))
        by_size = active[np.argsort(np.abs(w[active]))]
        kept = set(by_size[k:].tolist())
        candidates = np.array([p for p in range(len(w)) if p not in kept])
        grown = candidates[np.argsort(-np.abs(g[candidates]))[:k]]
        new = np.zeros(len(w), bool)
        new[list(kept)] = True
        new[grown] = True
        new_masks.append((new, set(by_size[:k].tolist()), set(grown.tolist())))
    return new_masks


@pytest.mark.parametrize("fraction", [0.5, 0.3, 0.17])
def test_rigl_update_ensemble_matches_reference(fraction):
    gen = torch.Generator().manual_seed(11)
    layer = SparseLinear(9, 7, ensemble=2)
    random_masks([layer], 0.6, gen)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * layer.mask)
    grad = torch.randn(layer.weight.shape, generator=gen)
    w0, m0 = layer.weight.detach().clone(), layer.mask.clone()
    nnz = int(m0[0].sum())
    assert nnz == int(m0[1].sum())
    expected = _reference_rigl(w0.numpy(), m0.numpy(), grad.numpy(), fraction)

    changed = rigl_update(layer, grad, fraction)

    for e, (new, dropped, grown) in enumerate(expected):
        got_mask = layer.mask[e].view(-1).bool().numpy()
        assert int(got_mask.sum()) == nnz
        np.testing.assert_array_equal(got_mask, new)
        old = m0[e].view(-1).bool().numpy()
        np.testing.assert_array_equal(changed[e].view(-1).numpy(), old ^ new)
        w = layer.weight.detach()[e].view(-1)
        for p in grown - dropped:  # genuinely new positions start at zero
            assert w[p].item() == 0.0
        for p in grown & dropped:  # regrown positions keep their value
            assert w[p].item() == w0[e].view(-1)[p].item()
        for p in dropped - grown:
            assert w[p].item() == 0.0
        keep = old & new
        assert torch.equal(w[torch.from_numpy(keep)], w0[e].view(-1)[torch.from_numpy(keep)])
        assert int((old & ~new).sum()) <= math.floor(fraction * nnz)
    assert changed.any()


def test_set_update_random_growth_keeps_nnz_and_drops_smallest():
    gen = torch.Generator().manual_seed(5)
    layer = SparseLinear(10, 6, ensemble=2)
    random_masks([layer], 0.5, gen)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * layer.mask)
    w0, m0 = layer.weight.detach().clone(), layer.mask.clone()
    nnz = int(m0[0].sum())
    fraction = 0.4
    k = math.floor(fraction * nnz)
    changed = rigl_update(layer, None, fraction, torch.Generator().manual_seed(9))
    for e in range(2):
        old = m0[e].view(-1).bool()
        new = layer.mask[e].view(-1).bool()
        assert int(new.sum()) == nnz
        assert torch.equal(changed[e].view(-1), old ^ new)
        # the k smallest-|w| active weights are the only candidates for removal
        active = torch.nonzero(old).flatten()
        order = active[w0[e].view(-1)[active].abs().argsort()]
        assert bool(new[order[k:]].all())
        w = layer.weight.detach()[e].view(-1)
        assert torch.equal(w, w * new.float())
        assert bool((w[new & ~old] == 0).all())
    assert changed.any()
    # same generator seed -> same topology
    layer2 = SparseLinear(10, 6, ensemble=2)
    with torch.no_grad():
        layer2.mask.copy_(m0)
        layer2.weight.copy_(w0)
    rigl_update(layer2, None, fraction, torch.Generator().manual_seed(9))
    assert torch.equal(layer2.mask, layer.mask)


def test_bf16_cast_cache_follows_every_weight_change():
    torch.manual_seed(0)
    layer = SparseLinear(8, 16, ensemble=2)
    random_masks([layer], 0.5, torch.Generator().manual_seed(0))
    apply_masks(layer)
    x = torch.randn(2, 40, 8)

    def fresh(weight, bias):  # the uncached computation
        bf = torch.bfloat16
        return torch.baddbmm(bias.to(bf).unsqueeze(1), x.to(bf), weight.to(bf).transpose(1, 2))

    with torch.no_grad():
        layer(x, dtype=torch.bfloat16)  # the cache is filled without autograd ...
    layer(x, dtype=torch.bfloat16).float().sum().backward()  # ... and still carries gradients
    weight = layer.weight.detach().clone().requires_grad_(True)
    fresh(weight, layer.bias.detach()).float().sum().backward()
    assert torch.equal(layer.weight.grad, weight.grad)
    layer(x, dtype=torch.bfloat16).float().sum().backward()  # one cast serves a second backward
    assert torch.equal(layer.weight.grad, 2 * weight.grad)

    optimiser = MaskedAdam(layer, lr=0.1)

    def adam_step():
        layer.weight.grad = torch.randn_like(layer.weight)
        layer.bias.grad = torch.randn_like(layer.bias)
        optimiser.step()

    changes = [
        lambda: layer.weight.add_(0.5),  # a Polyak step
        adam_step,  # the fused kernel, which writes weights behind autograd's version counters
        lambda: rigl_update(layer, torch.randn_like(layer.weight), 0.5),  # a topology update
        lambda: layer.load_state_dict({k: v + 1 for k, v in layer.state_dict().items()}),  # a checkpoint load
    ]
    for change in changes:
        with torch.no_grad():
            change()
        assert torch.equal(layer(x, dtype=torch.bfloat16), fresh(layer.weight, layer.bias))
    copy.deepcopy(layer)  # the cache does not block copying (target networks)


@pytest.mark.parametrize("shared_input", [True, False])
def test_ensemble_layer_equals_independent_linear_layers(shared_input):
    torch.manual_seed(0)
    # One output with the shared input covers the layer's one-output path (a view, not a transpose).
    layer = SparseLinear(9, 1 if shared_input else 7, ensemble=2)
    x = torch.randn(30, 9) if shared_input else torch.randn(2, 30, 9)
    out = layer(x.requires_grad_(True))
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    weight = layer.weight.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    members = [torch.nn.functional.linear(x_ref if shared_input else x_ref[m], weight[m], bias[m]) for m in range(2)]
    reference = torch.stack(members)
    reference.backward(grad_out)
    torch.testing.assert_close(out, reference)
    for got, want in ((layer.weight.grad, weight.grad), (layer.bias.grad, bias.grad), (x.grad, x_ref.grad)):
        torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- gradual magnitude pruning

def test_gmp_schedule_is_zhu_and_gupta_cubic():
    assert gmp_sparsity(0, 100, 500, 0.9) == 0.0
    assert gmp_sparsity(100, 100, 500, 0.9) == 0.0
    assert gmp_sparsity(300, 100, 500, 0.9) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert gmp_sparsity(200, 100, 500, 0.9) == pytest.approx(0.9 * (1 - 0.75 ** 3))
    assert gmp_sparsity(500, 100, 500, 0.9) == 0.9
    assert gmp_sparsity(10_000, 100, 500, 0.9) == 0.9
    values = [gmp_sparsity(t, 100, 500, 0.9) for t in range(0, 600, 10)]
    steps = np.diff(values[11:51])
    assert np.all(steps > 0) and np.all(np.diff(steps) < 1e-12)  # rising, ever more slowly


def test_magnitude_prune_keeps_the_largest_alive_weights_per_member():
    layer = SparseLinear(3, 2, ensemble=2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[5., -1., 3.], [-4., 2., 0.5]],
                                         [[0.1, 0.2, 0.3], [-0.6, 0.5, -0.4]]]))
        layer.mask[0, 0, 0] = 0.0  # dead already: its large weight must not come back
        layer.mask[1, 1, 0] = 0.0
        layer.weight.mul_(layer.mask)
    removed = magnitude_prune(layer, 3)
    assert layer.mask[0].tolist() == [[0, 0, 1], [1, 1, 0]]
    assert layer.mask[1].tolist() == [[0, 0, 1], [0, 1, 1]]
    assert torch.equal(layer.weight.detach(), layer.weight.detach() * layer.mask)
    assert removed[0].tolist() == [[False, True, False], [False, False, True]]
    assert int(removed.sum()) == 4  # 5 alive -> 3 in each member
    assert not magnitude_prune(layer, 3).any()  # already there: nothing to remove
    assert not magnitude_prune(layer, 6).any()  # pruning never regrows


def test_prune_to_reaches_the_er_share_of_each_layer():
    torch.manual_seed(0)
    layers = [SparseLinear(11, 64), SparseLinear(64, 64), SparseLinear(64, 3)]
    shapes = [(l.out_features, l.in_features) for l in layers]
    for sparsity in (0.3, 0.7, 0.95):
        prune_to(layers, sparsity)
        assert [int(l.mask.sum()) for l in layers] == layer_nnz(shapes, sparsity)
    total = sum(l.mask.numel() for l in layers)
    assert 1 - sum(int(l.mask.sum()) for l in layers) / total == pytest.approx(0.95, abs=1 / total)
