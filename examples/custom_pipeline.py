"""Using virnucdist's pieces inside your own torchrun program.

    torchrun --standalone --nproc_per_node=2 examples/custom_pipeline.py examples/proteins.fa -o runs/custom

Here the "own" part is the post-processing: L2-normalised ESM-2 embeddings plus a
per-sequence score (distance to the batch centroid), written through virnucdist's
per-rank shards and merged in input order. Swap in your own model by writing an
``EmbeddingModel`` (virnucdist.models.adapters: ``embed(batch, layers, per_token) ->
EmbedOutput``) instead of ``load_model``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import virnucdist as vd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fasta", nargs="+")
    ap.add_argument("-o", "--output-dir", required=True)
    ap.add_argument("--model", default="esm2_t6_8M_UR50D")
    args = ap.parse_args()

    ctx = vd.init_distributed()  # RANK/WORLD_SIZE from torchrun; NCCL on GPUs, gloo on CPU
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = vd.build_index_distributed(args.fasta, out, ctx.rank, ctx.world_size, ctx.barrier)
    model = vd.load_model(args.model, device=ctx.device, random_init=True)  # or a real checkpoint path

    costs = np.array([model.tokenizer.estimate_tokens(int(n)) for n in index.length])
    mine = vd.partition(costs, ctx.world_size)[ctx.rank]
    loader = vd.PackedBatchLoader(index.read, mine, index.length[mine], model.tokenizer, toks_per_batch=2048,
                                  num_workers=0)
    writer = vd.ShardWriter(out / "shards", ctx.rank, model.dim + 1, index.ids)
    with torch.inference_mode():
        for batch in loader:
            emb = model.embed(batch.to(ctx.device)).pooled[0]  # fp32 [B, D], the last layer
            emb = torch.nn.functional.normalize(emb, dim=1)
            score = (emb - emb.mean(0, keepdim=True)).norm(dim=1, keepdim=True)
            writer.write(batch.rows, torch.cat([emb, score], dim=1).cpu())
    writer.close()
    ctx.barrier()
    if ctx.is_main:
        n = vd.finalize_embeddings(out / "shards", out / "embeddings.h5", index.ids, np.arange(len(index)),
                                   {"model": model.name, "postprocessing": "l2-normalised + centroid distance"})
        print(f"wrote {n} records to {out / 'embeddings.h5'}")
    ctx.barrier()
    ctx.shutdown()


if __name__ == "__main__":
    main()
