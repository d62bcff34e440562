"""ESM-2 from Hugging Face directories and hub ids: equal to transformers' own EsmModel forward."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from virnucdist.errors import UserError  # noqa: E402
from virnucdist.models.hf_cache import UnknownModelTypeError  # noqa: E402
from virnucdist.models.loading import load_model, model_family  # noqa: E402
from virnucdist.models.tokenization import ESM_TOKENS  # noqa: E402
from virnucdist.packing import pack_token_arrays  # noqa: E402
from virnucdist.tasks.identity import molecule_of_spec, width_of_spec  # noqa: E402

AA = list("ACDEFGHIKLMNPQRSTVWYXBUZO")
LAYERS, DIM, HEADS = 3, 64, 4


def _hf_esm_dir(tmp_path, name="esm_hf", seed=0, **save):
    """A random EsmForMaskedLM (non-trivial LayerNorms) saved with save_pretrained, with its tokenizer files."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    cfg = EsmConfig(vocab_size=33, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                    intermediate_size=4 * DIM, position_embedding_type="rotary", token_dropout=True,
                    emb_layer_norm_before=False, pad_token_id=1, mask_token_id=32, max_position_embeddings=1026,
                    hidden_act="gelu", layer_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = EsmForMaskedLM(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm" in n or "layer_norm" in n:
                p.copy_((1.0 if n.endswith("weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    d = tmp_path / name
    model.save_pretrained(d, **save)
    vocab = tmp_path / f"{name}_vocab.txt"
    vocab.write_text("\n".join(ESM_TOKENS) + "\n")
    EsmTokenizer(str(vocab)).save_pretrained(d)
    return d, model


def _proteins(n=12, seed=1):
    rng = np.random.default_rng(seed)
    out = ["".join(rng.choice(AA[:20], size=int(k))) for k in rng.integers(3, 90, size=n - 2)]
    return out + ["M" + "".join(rng.choice(AA, size=40)), "AC<mask>DE".replace("<mask>", "")]


def _transformers_means(model, tokenizer, seqs, layers):
    """transformers' EsmModel: residue means (cls/eos excluded) of each layer, padded batch."""
    enc = tokenizer(seqs, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.esm(**enc, output_hidden_states=True)
    hs = list(out.hidden_states)
    assert len(hs) == LAYERS + 1
    hs[-1] = out.last_hidden_state  # the last layer after emb_layer_norm_after, as fair-esm's repr_layers
    mask = enc["attention_mask"].clone()
    mask[:, 0] = 0
    mask[torch.arange(len(seqs)), enc["attention_mask"].sum(1) - 1] = 0
    return {k: (hs[k] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True) for k in layers}, enc


def _ours(loaded, seqs, layers):
    arrays = [loaded.tokenizer.encode(s) for s in seqs]
    with torch.inference_mode():
        out = loaded.embed(pack_token_arrays(arrays, range(len(seqs))), layers)
    return dict(zip(loaded.check_layers(layers), out.pooled)), arrays


@pytest.mark.parametrize("save", [{}, {"max_shard_size": "60KB"}], ids=["single", "sharded"])
def test_hf_dir_equals_transformers(tmp_path, save):
    from transformers import AutoTokenizer

    d, model = _hf_esm_dir(tmp_path, **save)
    if save:  # several safetensors shards and their index
        assert (d / "model.safetensors.index.json").is_file() and len(list(d.glob("model-*.safetensors"))) > 1
    assert model_family(str(d)) == "esm2" and molecule_of_spec(str(d)) == "protein"
    assert width_of_spec(str(d), False) == DIM
    loaded = load_model(str(d))
    assert loaded.kind == "esm2" and loaded.dim == DIM and loaded.num_layers == LAYERS
    seqs = _proteins()
    layers = (0, 1, 2, 3)
    ref, enc = _transformers_means(model, AutoTokenizer.from_pretrained(d), seqs, layers)
    ours, arrays = _ours(loaded, seqs, layers)
    for a, ids, m in zip(arrays, enc["input_ids"], enc["attention_mask"]):  # same tokens (cls ... eos)
        assert a.tolist() == ids[: int(m.sum())].tolist()
    for k in layers:
        cos = F.cosine_similarity(ours[k].double(), ref[k].double(), dim=-1)
        assert cos.min().item() >= 0.99999, (k, cos.min().item())
        assert torch.allclose(ours[k], ref[k], atol=1e-4, rtol=1e-4), k


def test_pytorch_model_bin_and_mask_token(tmp_path):
    d, model = _hf_esm_dir(tmp_path)
    (d / "model.safetensors").unlink()  # the older layout: a pickled state dict of tensors
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    assert (d / "pytorch_model.bin").is_file() and not list(d.glob("*.safetensors"))
    loaded = load_model(str(d))
    # a <mask> token exercises token dropout's rescaling on both sides
    ids = torch.tensor([[0, 5, 6, 32, 7, 8, 2]])
    with torch.no_grad():
        ref = model.esm(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0, 1:-1].mean(0)
        got = loaded.embed(pack_token_arrays([ids[0].numpy()], [0])).pooled[0][0]
    assert F.cosine_similarity(got.double(), ref.double(), dim=0).item() >= 0.99999


def test_hub_id_in_a_fake_hf_cache(tmp_path, monkeypatch):
    d, model = _hf_esm_dir(tmp_path)
    repo = tmp_path / "hf_home" / "hub" / "models--facebook--esm2_t33_650M_UR50D"
    snap = repo / "snapshots" / "0123abcd"
    shutil.copytree(d, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    hub_id = "facebook/esm2_t33_650M_UR50D"
    assert model_family(hub_id) == "esm2"
    assert width_of_spec(hub_id, False) == DIM  # the cached config's width, not the 650M name's 1280
    loaded = load_model(hub_id)
    assert loaded.name == "esm2_t33_650M_UR50D" and str(snap) in loaded.source
    seqs = _proteins(4)
    ours, _ = _ours(loaded, seqs, (-1,))
    ref, _ = _ours(load_model(str(d)), seqs, (-1,))
    assert torch.equal(ours[LAYERS], ref[LAYERS])
    # HF_HUB_CACHE wins over HF_HOME; an id not in the cache is one line naming where we looked
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(UserError, match="not in the local Hugging Face cache .*elsewhere"):
        load_model(hub_id)


def test_family_from_config_model_type(tmp_path):
    from virnucdist.models.random_init import random_dnabert_s, DNABERT_S_TINY
    from _formats import save_hf_dir

    dna, _ = random_dnabert_s(0, config=DNABERT_S_TINY)
    dd = save_hf_dir(dna, tmp_path / "dnabert")  # DNABERT-S directories are still DNABERT-S
    assert model_family(str(dd)) == "dnabert_s" and load_model(str(dd)).kind == "dnabert_s"
    odd = tmp_path / "llama"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UnknownModelTypeError, match="model_type 'llama'.*ESM-2.*DNABERT-S"):
        load_model(str(odd))


def test_unsupported_esm_config_is_one_line(tmp_path):
    d, _ = _hf_esm_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["position_embedding_type"] = "absolute"  # ESM-1b style: not ESM-2
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="position_embedding_type = 'absolute'"):
        load_model(str(d))


def test_embed_run_with_an_hf_directory(tmp_path):
    """``embed --model HF_DIR``: taken for ESM-2 (protein input accepted), vectors as transformers gives them."""
    from transformers import AutoTokenizer

    from virnucdist import EmbedConfig, embed
    from virnucdist.data.fasta import write_fasta
    from virnucdist.writers import read_embeddings

    d, model = _hf_esm_dir(tmp_path)
    seqs = _proteins(8)
    fasta = tmp_path / "p.fa"
    write_fasta(fasta, [(f"p{i}", s) for i, s in enumerate(seqs)])
    embed(EmbedConfig(inputs=(str(fasta),), model=str(d), output_dir=str(tmp_path / "out"), num_workers=0,
                      device="cpu", quiet=True))
    ids, emb = read_embeddings(tmp_path / "out" / "embeddings.h5")
    assert ids == [f"p{i}" for i in range(8)]
    ref, _ = _transformers_means(model, AutoTokenizer.from_pretrained(d), seqs, (LAYERS,))
    cos = F.cosine_similarity(torch.from_numpy(emb).double(), ref[LAYERS].double(), dim=-1)
    assert cos.min().item() >= 0.99999


def test_fast_esm_repackaging_reads_as_esm2(tmp_path):
    """FastESM2 directories: model_type 'fast_esm', two config keys spelled differently, the same tensors."""
    d, model = _hf_esm_dir(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "fast_esm"
    cfg["num_hiddenum_layers"] = cfg.pop("num_hidden_layers")
    cfg["num_attentionum_heads"] = cfg.pop("num_attention_heads")
    (d / "config.json").write_text(json.dumps(cfg))
    assert model_family(str(d)) == "esm2"
    loaded = load_model(str(d))
    assert loaded.num_layers == LAYERS
    ids = torch.tensor([[0, 5, 6, 7, 8, 9, 2]])
    with torch.no_grad():
        ref = model.esm(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0, 1:-1].mean(0)
        got = loaded.embed(pack_token_arrays([ids[0].numpy()], [0])).pooled[0][0]
    assert F.cosine_similarity(got.double(), ref.double(), dim=0).item() >= 0.99999


def test_incomplete_sharded_download_is_one_line(tmp_path):
    d, _ = _hf_esm_dir(tmp_path, max_shard_size="60KB")
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(UserError, match=f"shard index names 1 missing file.*{shard.name}.*incomplete"):
        load_model(str(d))
