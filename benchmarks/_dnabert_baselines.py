"""DNABERT-S the way it is usually run: a padded [B, L] forward with an explicit
ALiBi bias and key-padding mask (MosaicBERT's plain PyTorch attention path),
on the same weights as the packed model. Batch size 1 in fp32 is the original
VirNucPro method; larger batches are the padded refactor."""

from __future__ import annotations

import math

import torch

from virnucdist.models.dnabert_s import PackedDnaBertS


@torch.inference_mode()
def padded_embed(model: PackedDnaBertS, token_lists: list, device) -> torch.Tensor:
    """Mean over all tokens of each sequence, ``[B, hidden]`` fp32."""
    cfg = model.config
    b, length = len(token_lists), max(len(t) for t in token_lists)
    ids = torch.full((b, length), 3, dtype=torch.long)  # [PAD]
    for i, t in enumerate(token_lists):
        ids[i, :len(t)] = torch.as_tensor(t)
    ids = ids.to(device)
    lengths = torch.tensor([len(t) for t in token_lists], device=device)
    valid = torch.arange(length, device=device)[None, :] < lengths[:, None]  # [B, L]
    x = model.embeddings(ids)  # [B, L, D]
    heads, hd = cfg.num_attention_heads, cfg.head_dim
    pos = torch.arange(length, device=device)
    slopes = model.alibi_slopes(ids.device)
    bias = -slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs()  # [H, L, L]
    bias = bias[None] + torch.where(valid, 0.0, float("-inf"))[:, None, None, :]  # [B, H, L, L]
    bias = bias.to(x.dtype)
    for layer in model.encoder.layer:
        att = layer.attention
        q, k, v = att.self.Wqkv(x).view(b, length, 3, heads, hd).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + bias
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, length, heads * hd)
        x = att.output.LayerNorm(att.output.dense(a) + x)
        x = layer.mlp(x.reshape(b * length, -1)).view(b, length, -1)
    w = valid[..., None].to(torch.float32)
    return (x.float() * w).sum(1) / w.sum(1)
