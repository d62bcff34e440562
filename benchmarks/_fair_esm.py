"""fair-esm the way it is usually run, on the same weights as the packed model: its own ESM2 built from a
:class:`~virnucdist.models.esm2.PackedESM2` and its length-sorted ``FastaBatchedDataset`` batching (the
baseline of throughput.py's ESM-2 workloads and of the kernels table in _kernels.py)."""

from __future__ import annotations

import torch
from _common import Timer

from virnucdist.models.esm2 import PackedESM2

__all__ = ["fair_esm_from_packed", "run_fair_esm"]


def fair_esm_from_packed(packed: PackedESM2, dtype: torch.dtype, device) -> torch.nn.Module:
    """fair-esm's own ESM2 holding the same weights (q/k/v split back out)."""
    import esm

    cfg = packed.cfg
    with torch.device(device):
        ref = esm.model.esm2.ESM2(num_layers=cfg.num_layers, embed_dim=cfg.embed_dim,
                                  attention_heads=cfg.attention_heads,
                                  alphabet=esm.data.Alphabet.from_architecture("ESM-1b"),
                                  token_dropout=cfg.token_dropout)
    state = {}
    for k, v in packed.state_dict().items():
        if ".self_attn.qkv." in k:
            for p, t in zip("qkv", v.chunk(3)):
                state[k.replace(".qkv.", f".{p}_proj.")] = t
        else:
            state[k] = v
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(("lm_head", "contact_head")) or "rot_emb" in k for k in missing), missing
    return ref.to(dtype).eval()


@torch.inference_mode()
def run_fair_esm(model, records, toks_per_batch: int, device) -> tuple[float, int, dict]:
    """fair-esm forward over length-sorted batches; returns (seconds, tokens, {id: mean embedding})."""
    import esm

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    ds = esm.data.FastaBatchedDataset([r for r, _ in records], [s for _, s in records])
    batches = ds.get_batch_indices(toks_per_batch, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(ds, collate_fn=alphabet.get_batch_converter(1022), batch_sampler=batches)
    layer = model.num_layers
    out: dict[str, torch.Tensor] = {}
    tokens = 0
    with Timer(device) as t:
        for labels, strs, toks in loader:
            toks = toks.to(device, non_blocking=True)
            rep = model(toks, repr_layers=[layer])["representations"][layer]
            for i, label in enumerate(labels):
                n = min(1022, len(strs[i]))
                out[label] = rep[i, 1:n + 1].float().mean(0)
                tokens += n + 2
    return t.seconds, tokens, out
