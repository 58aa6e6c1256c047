"""The Algorithm Distillation transformer: a small causal GPT over learning histories.

One token per transition (as in XLand-100B's AD, 3x shorter than s/a/r tokens): token t
embeds the observation s_t, the previous action a_{t-1} and the previous reward r_{t-1};
from tokens 0..t the model predicts a_t. Positions are learned and count from the start of
the window, in training and at test. Attention is written out (matmul, causal mask,
softmax) where the graph is exported, so that it holds plain ONNX ops, and where attention
dropout is on, since torch's fused CPU kernel has none; elsewhere (evaluation) it is torch's
fused kernel, 5-6x faster at a 200-token window. The export's parity check compares the two.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ADConfig:
    """The transformer's shape, as a checkpoint stores it; the defaults a run starts from are
    `ad train`'s (tinypolicy.pipeline.settings.ADTrainConfig)."""
    num_states: int
    num_actions: int
    window: int                 # context length T in transitions
    dim: int
    layers: int
    heads: int
    ff_dim: int
    dropout: float              # residual and embedding dropout
    attn_dropout: float
    # tokens also carry the return so far in their episode (Key-to-Door: whether the key is held)
    episode_return_input: bool = False

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if min(self.num_states, self.num_actions, self.window, self.dim, self.layers, self.ff_dim) <= 0:
            raise ValueError("model sizes must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


def _dropped(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A dropout mask (True: dropped) and the scale of what is kept, drawn as random bytes:
    torch's Bernoulli sampler draws about 70M numbers/s on this CPU, which made attention
    dropout a third of a training step at a 200-token window; bytes come 5x faster. The keep
    probability is rounded to 1/256 (p = 0.3 drops 0.3008)."""
    keep = round((1.0 - p) * 256)
    return torch.empty(shape, dtype=torch.uint8).random_() >= keep, 256.0 / keep


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ADConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.attn_dropout = cfg.attn_dropout
        # True above the diagonal: token t may not look at tokens after t.
        self.register_buffer("future", torch.ones(cfg.window, cfg.window, dtype=torch.bool).triu(1),
                             persistent=False)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Attention outputs for every token, or (last_only) for the last token alone,
        which may attend to all tokens: the rollout needs no other output of the top block."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if last_only:
            q = q[:, :, -1:]
        dropout = self.attn_dropout if self.training else 0.0
        if dropout or torch.onnx.is_in_onnx_export():
            scores = (q / math.sqrt(self.head_dim)) @ k.transpose(-2, -1)
            if not last_only:
                scores = scores.masked_fill(self.future[:length, :length], float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            if dropout:
                dropped, scale = _dropped(weights.shape, dropout)
                out = (weights.masked_fill(dropped, 0.0) @ v) * scale  # scaling the output: 12x fewer numbers
            else:
                out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=not last_only)
        out = out.transpose(1, 2).reshape(batch, q.shape[2], dim)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block (trains more stably than post-norm at small budgets)."""

    def __init__(self, cfg: ADConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.ff = nn.Sequential(nn.Linear(cfg.dim, cfg.ff_dim), nn.GELU(), nn.Linear(cfg.ff_dim, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        x = (x[:, -1:] if last_only else x) + self.drop(self.attn(self.norm1(x), last_only))
        return x + self.drop(self.ff(self.norm2(x)))


class ADTransformer(nn.Module):
    """(states, prev_actions, prev_rewards[, episode_returns]) [B, L] with L <= window -> action
    logits [B, L, A].

    prev_actions uses `num_actions` as "no previous action" (the first token of a history).
    episode_returns (required where cfg.episode_return_input, else unused) is the return collected
    earlier in each token's episode: what an agent in a dark room remembers of its episode, which a window that
    starts mid-episode cannot tell it.
    """

    def __init__(self, cfg: ADConfig):
        super().__init__()
        self.cfg = cfg
        self.state_emb = nn.Embedding(cfg.num_states, cfg.dim)
        self.action_emb = nn.Embedding(cfg.num_actions + 1, cfg.dim)
        self.reward_emb = nn.Linear(1, cfg.dim)
        self.return_emb = nn.Linear(1, cfg.dim) if cfg.episode_return_input else None
        self.pos_emb = nn.Parameter(torch.zeros(cfg.window, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_actions)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, states: torch.Tensor, prev_actions: torch.Tensor, prev_rewards: torch.Tensor,
                episode_returns: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits [B, L, A]; with last_only, [B, 1, A] for the last token (a third cheaper at 3 layers)."""
        if episode_returns is None and self.return_emb is not None:
            raise ValueError("episode_returns must be given: this model takes them (episode_return_input)")
        length = states.shape[1]
        x = (self.state_emb(states) + self.action_emb(prev_actions)
             + self.reward_emb(prev_rewards.unsqueeze(-1)) + self.pos_emb[:length])
        if self.return_emb is not None:
            x = x + self.return_emb(episode_returns.unsqueeze(-1))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, last_only and i == len(self.blocks) - 1)
        return self.head(self.norm(x))


class ADStepPolicy(nn.Module):
    """The deployable step function: a fixed [1, T] window plus its valid length n -> the
    action logits [1, A] of token n - 1. The caller keeps the last T transitions in a ring
    buffer, left-aligned while fewer than T exist; tokens at n..T-1 are padding, which the
    causal mask already hides from token n - 1 (no separate key-padding mask is needed)."""

    def __init__(self, model: ADTransformer):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        """(states, prev_actions, prev_rewards[, episode_returns], valid_length): the model's
        inputs (tinypolicy.export.ad_onnx.input_names) and the valid length."""
        *tokens, valid_length = inputs
        logits = self.model(*tokens)                                  # [1, T, A]
        return torch.index_select(logits, 1, valid_length - 1).squeeze(1)
