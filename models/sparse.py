"""Masked linear layers.

A sparse layer is a dense weight tensor that holds exact zeros outside a binary mask.
Training keeps the zeros exact (gradients, Adam moments, weights and target weights are
all multiplied by the mask), so FLOPs and parameter savings are counted analytically
from the mask and realised later by the export stage.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class SparseLinear(nn.Module):
    """`ensemble` independent linear layers computed as one batched matmul.

    weight: [ensemble, out, in], bias: [ensemble, out], mask: buffer shaped like weight.
    With ensemble=1 the layer behaves like `nn.Linear` on [batch, in] inputs; with
    ensemble>1 it maps [ensemble, batch, in] (or a shared [batch, in]) to
    [ensemble, batch, out]. The twin critics use ensemble=2 so that both Q heads run in
    one `baddbmm` instead of two Python-level forward passes.
    """

    def __init__(self, in_features: int, out_features: int, ensemble: int = 1):
        super().__init__()
        self.in_features, self.out_features, self.ensemble = in_features, out_features, ensemble
        self.weight = nn.Parameter(torch.empty(ensemble, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(ensemble, out_features))
        self.register_buffer("mask", torch.ones(ensemble, out_features, in_features))
        self._cast: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cast_key: tuple | None = None
        self.reset_parameters()

    def __getstate__(self) -> dict:
        # The cast cache holds autograd nodes, which neither deepcopy nor pickle accept.
        return self.__dict__ | {"_cast": None, "_cast_key": None}

    def reset_parameters(self, orthogonal: bool = False) -> None:
        """PyTorch's nn.Linear init (or orthogonal weights with zero bias, as SAC uses).

        Weights are scaled by 1/sqrt(density) so that each unit's pre-activation variance
        matches the dense network's despite having only density*fan_in inputs.
        """
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            for member in range(self.ensemble):
                if orthogonal:
                    nn.init.orthogonal_(self.weight[member])
                    self.bias[member].zero_()
                else:
                    nn.init.kaiming_uniform_(self.weight[member], a=math.sqrt(5))
                    nn.init.uniform_(self.bias[member], -bound, bound)
            density = self.mask.mean().clamp_min(1e-12)
            self.weight.mul_(self.mask / density.sqrt())

    @property
    def density(self) -> float:
        return float(self.mask.mean())

    def forward(self, x: torch.Tensor, frozen: bool = False, member: int | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """`frozen` uses detached parameters: the actor loss differentiates through the
        critic's input without paying for (and accumulating) the critic's weight gradients.
        `member` runs a single ensemble member on a [batch, in] input. `dtype` (bfloat16)
        computes in that precision from the float32 master weights, gradients included."""
        if dtype is None:
            weight, bias = self.weight, self.bias
        else:
            (weight, bias), x = self._low_precision(dtype), x.to(dtype)
        if frozen:
            weight, bias = weight.detach(), bias.detach()
        if member is not None:
            return F.linear(x, weight[member], bias[member])
        if self.ensemble == 1 and x.dim() == 2:  # a view, whose backward is cheaper than a select's
            return F.linear(x, weight.view(weight.shape[1:]), bias.view(bias.shape[1:]))
        if x.dim() == 2:
            x = x.expand(self.ensemble, *x.shape)
        # Computed as (W x^T + b)^T, whose weight gradient autograd forms as grad^T x: already
        # in the weight's [out, in] layout. The plain x W^T + b gives it as (x^T grad)^T, which
        # costs a transposing copy per backward and, for a one-output layer, a matrix-vector
        # product that bmm runs several times slower than this form.
        out = torch.baddbmm(bias.unsqueeze(-1), weight, x.transpose(1, 2))
        if self.out_features == 1:
            # The same memory as a view: its gradient then reaches bmm as a plain row-major
            # matrix (a transposed one-row gradient sends bmm down a slower path).
            return out.view(self.ensemble, -1, 1)
        return out.transpose(1, 2)

    def _low_precision(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias cast to `dtype` once per change of the float32 masters (an
        optimiser step, a Polyak or topology update, a load bumps their version) rather
        than once per forward. The cast stays in the autograd graph: it saves no tensors,
        so one copy serves every backward pass until the masters change."""
        key = (dtype, self.weight._version, self.bias._version)
        if key == self._cast_key and not torch.is_inference_mode_enabled():
            return self._cast
        with torch.enable_grad():  # a copy made under no_grad must still carry gradients later
            cast = (self.weight.to(dtype), self.bias.to(dtype))
        if not torch.is_inference_mode_enabled():  # inference tensors cannot enter autograd later
            self._cast, self._cast_key = cast, key
        return cast


def sparse_layers(module: nn.Module) -> list[SparseLinear]:
    return [m for m in module.modules() if isinstance(m, SparseLinear)]


@torch.no_grad()
def apply_masks(module: nn.Module) -> None:
    """w <- w * m for every sparse layer of `module` (also used on target networks)."""
    layers = sparse_layers(module)
    torch._foreach_mul_([l.weight for l in layers], [l.mask for l in layers])


def weight_sparsity(module: nn.Module) -> float:
    """Fraction of zero mask entries over all sparse-layer weights (biases excluded)."""
    layers = sparse_layers(module)
    total = sum(l.mask.numel() for l in layers)
    kept = sum(float(l.mask.sum()) for l in layers)
    return 1.0 - kept / total
