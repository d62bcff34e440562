"""``virnucdist train`` and Hugging Face ESM-2 on CUDA (bf16 models, the MLP trained on the GPU).

Skips without CUDA; run on a GPU machine with ``python -m pytest tests/gpu``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _train_data import genomes, tiny_models, two_sources

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_train_on_gpu_learns_and_predicts(tmp_path):
    from virnucdist.data.fasta import write_fasta
    from virnucdist.models.classifier import load_classifier
    from virnucdist.tasks.predict import PredictConfig, predict
    from virnucdist.tasks.train import TrainConfig, train
    from virnucdist.vnp.consensus import read_predictions

    viral, other = two_sources(tmp_path)
    esm, dna = tiny_models(tmp_path)
    train(TrainConfig(viral=(str(viral),), other=(str(other),), chunk_size=90, esm_model=str(esm),
                      dnabert_model=str(dna), output_dir=str(tmp_path / "t"), device="cuda", num_workers=0, quiet=True))
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    print(f"GPU train: {m['frames']} frames, auroc {m['auroc']:.4f}, epochs {m['epochs_run']}")
    assert m["auroc"] >= 0.9
    load_classifier(tmp_path / "t" / "classifier.pth", expected_input_dim=(128, 64))
    reads = genomes(6, 270, 0.6, "newvir", 7) + genomes(6, 270, -0.6, "newoth", 8)
    write_fasta(tmp_path / "r.fa", reads)
    predict(PredictConfig(inputs=(str(tmp_path / "r.fa"),), chunk_size=90, classifier=str(tmp_path / "t" / "classifier.pth"),
                          esm_model=str(esm), dnabert_model=str(dna), output_dir=str(tmp_path / "p"), device="cuda",
                          num_workers=0, quiet=True))
    rows = list(read_predictions(tmp_path / "p" / "prediction_results.txt"))
    right = np.mean([(r.prediction == "virus") == r.seq_id.startswith("newvir") for r in rows])
    assert right >= 0.75, right


def test_hf_esm2_bf16_on_gpu_matches_fp32(tmp_path):
    transformers = pytest.importorskip("transformers")
    from virnucdist.models.loading import load_model
    from virnucdist.packing import pack_token_arrays

    cfg = transformers.EsmConfig(vocab_size=33, hidden_size=320, num_hidden_layers=4, num_attention_heads=20,
                                 intermediate_size=1280, position_embedding_type="rotary", token_dropout=True,
                                 emb_layer_norm_before=False, pad_token_id=1, mask_token_id=32,
                                 max_position_embeddings=1026, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    transformers.EsmForMaskedLM(cfg).save_pretrained(tmp_path / "hf", max_shard_size="1MB")
    rng = np.random.default_rng(0)
    cpu = load_model(str(tmp_path / "hf"))
    gpu = load_model(str(tmp_path / "hf"), device="cuda", dtype=torch.bfloat16)
    arrays = [cpu.tokenizer.encode("".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=int(n))))
              for n in rng.integers(10, 300, size=32)]
    batch = pack_token_arrays(arrays, range(len(arrays)))
    with torch.inference_mode():
        ref = cpu.embed(batch).pooled[0]
        got = gpu.embed(batch.to("cuda")).pooled[0].cpu()
    cos = F.cosine_similarity(got.double(), ref.double(), dim=-1)
    print(f"HF ESM-2 bf16 on GPU vs fp32 CPU: min cosine {cos.min().item():.6f}")
    assert cos.min().item() >= 0.99
