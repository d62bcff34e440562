"""A third task on virnucdist's engine, in one small file: your own output from a model.

    torchrun --standalone --nproc_per_node=2 examples/custom_pipeline.py examples/proteins.fa -o runs/custom

The engine does the rank loop (index, resume, dedup, contiguous token-balanced
partition, packing in DataLoader workers, out-of-memory splitting, shards in input
order, finalize, run report); a task says only what is its own. This one reuses the
embed task's reading and packing and changes two things: what a record's result is
(an L2-normalised ESM-2 embedding plus its distance to its batch's centroid) and the
final file. To run your own model, override ``prepare`` (load it; give it
``embed(batch, layers, per_token)`` and a ``tokenizer``) the same way.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import virnucdist as vd
from virnucdist.engine.runner import to_host_async
from virnucdist.writers import finalize_embeddings


class NormalisedTask(vd.EmbedTask):
    name = "normalised-embeddings"

    def schema(self) -> vd.ShardSchema:
        return vd.ShardSchema(self.name, (vd.Column("value", "f4", (self.model.dim + 1,)),))

    def run_block(self, block: vd.Block) -> list[vd.Part]:
        parts = []
        for batch in block.batches:  # packed longest-first by the embed task's block maker
            for part, out in self.runners[0](batch):  # part: the records that ran (split after an OOM)
                emb = F.normalize(out.pooled[0], dim=1)
                score = (emb - emb.mean(0, keepdim=True)).norm(dim=1, keepdim=True)
                (host,), event = to_host_async(torch.cat([emb, score], dim=1))
                parts.append(vd.Part(part.rows, {"value": host}, event=event))
        return parts

    def finalize(self, out, index, results, plan: vd.RunPlan) -> dict:
        n = finalize_embeddings(out / "shards", out / "embeddings.h5", index.ids, plan.rows, plan.source,
                                {"model": self.model.name, "postprocessing": "l2-normalised + centroid distance"},
                                column="value", fingerprint=plan.fingerprint)
        return {"records": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fasta", nargs="+")
    ap.add_argument("-o", "--output-dir", required=True)
    ap.add_argument("--model", default="esm2_t6_8M_UR50D")
    args = ap.parse_args()
    cfg = vd.EmbedConfig(inputs=tuple(args.fasta), model=args.model, output_dir=args.output_dir,
                         random_init=True, toks_per_batch=2048, num_workers=0)  # or a real checkpoint path
    ctx = vd.init_distributed()  # RANK/WORLD_SIZE from torchrun; NCCL on GPUs, gloo on CPU
    try:
        result = vd.run(NormalisedTask(cfg), ctx)
        if ctx.is_main:
            print(f"wrote {result.output}")
    finally:
        ctx.shutdown()


if __name__ == "__main__":
    main()
