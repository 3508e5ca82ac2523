"""Noise injection by cross-attention: label-feature queries attend K noise tokens projected from z.

tokens = LayerNorm(reshape(W_t z, (K, d))): K tokens of width d from the noise vector z (z_dim);
q = W_q f (a 1x1 conv over the label features f, (B, C, h, w) -> (B, d, h, w)); k = W_k tokens, v = W_v tokens;
f <- f + W_o softmax_K(q . k / sqrt(d_head)) v, per head. With 3D noise z is a map (B, z_dim, h, w): every
position has its own K tokens, made from its own noise vector, and its query attends only those; a region whose
noise is re-sampled changes there. A noise vector shared by all positions gives exactly the tokens of the 2D path
(tested). Token count K, width d, heads and the scales where this sits are options (UNPUBLISHED in DP-SIMS).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NoiseCrossAttention(nn.Module):
    """f (B, C, h, w), z (B, z_dim) or (B, z_dim, h, w) -> f + attention output (B, C, h, w)."""

    def __init__(self, channels: int, z_dim: int, tokens: int = 16, dim: int = 64, heads: int = 1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"token_dim ({dim}) must be divisible by heads ({heads})")
        self.tokens, self.dim, self.heads = tokens, dim, heads
        self.to_tokens = nn.Linear(z_dim, tokens * dim)
        self.token_norm = nn.LayerNorm(dim)
        self.to_q = nn.Conv2d(channels, dim, 1)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Conv2d(dim, channels, 1)

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation of every layer (LayerNorm to weight 1, bias 0)."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def make_tokens(self, z: Tensor) -> Tensor:
        """(B, z_dim) -> (B, K, d)."""
        return self.token_norm(self.to_tokens(z).view(z.shape[0], self.tokens, self.dim))

    def forward(self, f: Tensor, z: Tensor) -> Tensor:
        b, _, h, w = f.shape
        nh, dh = self.heads, self.dim // self.heads
        q = self.to_q(f).view(b, nh, dh, h * w)
        scale = 1.0 / math.sqrt(dh)
        z = z.to(f.dtype)
        if z.dim() == 2:  # one set of K tokens per image
            t = self.make_tokens(z)  # (B, K, d)
            k = self.to_k(t).view(b, self.tokens, nh, dh).permute(0, 2, 1, 3)  # (B, nh, K, dh)
            v = self.to_v(t).view(b, self.tokens, nh, dh).permute(0, 2, 1, 3)
            attn = torch.softmax(torch.einsum("bnkd,bndp->bnkp", k, q) * scale, dim=2)  # (B, nh, K, hw)
            out = torch.einsum("bnkp,bnkd->bndp", attn, v)  # (B, nh, dh, hw)
        else:  # 3D noise: K tokens per position, from that position's noise vector
            if tuple(z.shape[-2:]) != (h, w):
                z = F.interpolate(z, size=(h, w), mode="nearest")
            zf = z.flatten(2).transpose(1, 2)  # (B, hw, z_dim)
            t = self.make_tokens(zf.reshape(b * h * w, -1)).view(b, h * w, self.tokens, self.dim)
            k = self.to_k(t).view(b, h * w, self.tokens, nh, dh)
            v = self.to_v(t).view(b, h * w, self.tokens, nh, dh)
            logits = torch.einsum("bpknd,bndp->bnkp", k, q) * scale
            attn = torch.softmax(logits, dim=2)
            out = torch.einsum("bnkp,bpknd->bndp", attn, v)
        return f + self.to_out(out.reshape(b, self.dim, h, w))
