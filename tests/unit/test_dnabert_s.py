"""DNABERT-S: packed forward vs a plain per-sequence reference, tokenizer, loading."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from virnucdist.errors import UserError
from virnucdist.models.dnabert_s import DnaBertSConfig, PackedDnaBertS
from virnucdist.models.dnabert_s_loading import DnaBertSCheckpointError, load_dnabert_s
from virnucdist.models.errors import LayerError
from virnucdist.models.loading import ModelLoadError, load_model
from virnucdist.models.tokenization import PACKAGED_TOKENIZER, DnaBertSTokenizer
from virnucdist.packing import pack_token_arrays
from virnucdist.models.random_init import DNABERT_S_TINY, random_dnabert_s
from _formats import save_hf_dir

SHARED_TOK = Path("/work/shared/data/dnabert-s-tokenizer")
needs_shared = pytest.mark.skipif(not SHARED_TOK.is_dir(), reason="shared tokenizer dir absent")

# 12 heads (so the non-power-of-two ALiBi slopes are exercised), 2 small layers,
# a large init so attention and the MLP matter to the output.
SMALL = DnaBertSConfig(hidden_size=192, num_hidden_layers=2, num_attention_heads=12,
                       intermediate_size=256, initializer_range=0.1)


# --------------------------------------------------------------------------- reference

def ref_slopes(n_heads: int) -> torch.Tensor:
    assert n_heads == 12
    return torch.tensor([2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(i + 0.5) for i in range(4)],
                        dtype=torch.float64)


def reference_hidden(sd: dict, cfg: DnaBertSConfig, ids: torch.Tensor) -> torch.Tensor:
    """DNABERT-2 bert_layers.BertModel on ONE unpadded sequence, in float64."""
    sd = {k: v.double() for k, v in sd.items()}
    H, nh, I, eps = cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.layer_norm_eps
    hd = H // nh
    L = ids.numel()

    def ln(x, name):
        return F.layer_norm(x, (H,), sd[name + ".weight"], sd[name + ".bias"], eps)

    x = sd["embeddings.word_embeddings.weight"][ids] + sd["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    pos = torch.arange(L)
    rel = (pos[None, :] - pos[:, None]).abs().double()               # [L, L]
    bias = -ref_slopes(nh)[:, None, None] * rel[None]                # [nh, L, L]
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        qkv = x @ sd[p + "attention.self.Wqkv.weight"].T + sd[p + "attention.self.Wqkv.bias"]
        q = qkv[:, 0:H].reshape(L, nh, hd).transpose(0, 1)          # [nh, L, hd]
        k = qkv[:, H:2 * H].reshape(L, nh, hd).transpose(0, 1)
        v = qkv[:, 2 * H:].reshape(L, nh, hd).transpose(0, 1)
        scores = q @ k.transpose(1, 2) / math.sqrt(hd) + bias
        probs = torch.exp(scores - scores.amax(-1, keepdim=True))
        probs = probs / probs.sum(-1, keepdim=True)
        a = (probs @ v).transpose(0, 1).reshape(L, H)
        a = a @ sd[p + "attention.output.dense.weight"].T + sd[p + "attention.output.dense.bias"]
        x = ln(a + x, p + "attention.output.LayerNorm")
        g = x @ sd[p + "mlp.gated_layers.weight"].T
        h = F.gelu(g[:, :I]) * g[:, I:]
        h = h @ sd[p + "mlp.wo.weight"].T + sd[p + "mlp.wo.bias"]
        x = ln(h + x, p + "mlp.layernorm")
    return x


def random_dna(rng: np.random.Generator, n: int) -> str:
    s = rng.choice(list("ACGT"), n).tolist()
    for _ in range(rng.integers(0, 3)):          # a few N and lowercase stretches
        i = int(rng.integers(0, n))
        s[i:i + 3] = ["N"] * len(s[i:i + 3])
    if rng.random() < 0.3:
        i = int(rng.integers(0, n))
        s[i:i + 20] = [c.lower() for c in s[i:i + 20]]
    return "".join(s)


def pack(arrays: list[np.ndarray]):
    lens = [len(a) for a in arrays]
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)
    return torch.from_numpy(np.concatenate(arrays)), cu, max(lens)


def cos(a, b):
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


# --------------------------------------------------------------------------- architecture

def expected_shapes(cfg: DnaBertSConfig) -> dict[str, tuple]:
    H, I = cfg.hidden_size, cfg.intermediate_size
    e = {"embeddings.word_embeddings.weight": (cfg.vocab_size, H),
         "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, H),
         "embeddings.LayerNorm.weight": (H,), "embeddings.LayerNorm.bias": (H,)}
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        e.update({p + "attention.self.Wqkv.weight": (3 * H, H), p + "attention.self.Wqkv.bias": (3 * H,),
                  p + "attention.output.dense.weight": (H, H), p + "attention.output.dense.bias": (H,),
                  p + "attention.output.LayerNorm.weight": (H,), p + "attention.output.LayerNorm.bias": (H,),
                  p + "mlp.gated_layers.weight": (2 * I, H),
                  p + "mlp.wo.weight": (H, I), p + "mlp.wo.bias": (H,),
                  p + "mlp.layernorm.weight": (H,), p + "mlp.layernorm.bias": (H,)})
    e.update({"pooler.dense.weight": (H, H), "pooler.dense.bias": (H,)})
    return e


def test_state_dict_names_and_parameter_count():
    with torch.device("meta"):
        m = PackedDnaBertS(DnaBertSConfig())
    sd = m.state_dict()
    assert len(sd) == 138
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(DnaBertSConfig())
    assert sum(p.numel() for p in m.parameters()) == 117_068_544
    assert sd["encoder.layer.0.attention.self.Wqkv.weight"].shape == (2304, 768)
    assert sd["encoder.layer.11.mlp.gated_layers.weight"].shape == (6144, 768)


def test_alibi_slopes():
    m = PackedDnaBertS(SMALL)
    s = m.alibi_slopes(torch.device("cpu"))
    assert s.dtype == torch.float32
    torch.testing.assert_close(s.double(), ref_slopes(12), rtol=1e-7, atol=0)
    # still fp32 (not rounded) after a cast of the model
    m = m.to(torch.bfloat16)
    assert m.alibi_slopes(torch.device("cpu")).dtype == torch.float32


def test_config_json_roundtrip(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**SMALL.to_hf_json(), "auto_map": {"AutoModel": "bert_layers.BertModel"},
                             "hidden_act": "gelu", "hidden_dropout_prob": 0.1}))
    assert DnaBertSConfig.from_json(p) == SMALL
    assert SMALL.to_hf_json()["architectures"] == ["BertModel"]


# --------------------------------------------------------------------------- forward

@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return random_dnabert_s(1, config=SMALL)


def test_packed_matches_reference_small(small_model):
    model, tok = small_model
    rng = np.random.default_rng(0)
    seqs = [random_dna(rng, int(n)) for n in rng.integers(20, 600, 20)]
    ids = [tok.encode(s) for s in seqs]
    tokens, cu, max_len = pack(ids)
    with torch.inference_mode():
        hidden = model(tokens, cu, max_len)
        emb = model.embed(tokens, cu, max_len)
    assert hidden.shape == (tokens.numel(), SMALL.hidden_size) and emb.dtype == torch.float32
    sd = model.state_dict()
    worst, maxdiff = 1.0, 0.0
    for i, a in enumerate(ids):
        ref = reference_hidden(sd, SMALL, torch.from_numpy(a))
        got = hidden[cu[i]:cu[i + 1]]
        c_tok = cos(got, ref).min().item()
        c_emb = cos(emb[i], ref.mean(0)).item()       # mean over ALL tokens incl. CLS/SEP
        worst = min(worst, c_tok, c_emb)
        maxdiff = max(maxdiff, (got.double() - ref).abs().max().item())
    print(f"small config: worst cosine {worst:.8f}, max abs diff {maxdiff:.3e}")
    assert worst >= 0.9999
    assert maxdiff < 1e-3


def test_packed_matches_reference_real_config():
    model, tok = random_dnabert_s(3)
    rng = np.random.default_rng(1)
    seqs = [random_dna(rng, n) for n in (30, 150, 90)]
    ids = [tok.encode(s) for s in seqs]
    tokens, cu, max_len = pack(ids)
    with torch.inference_mode():
        emb = model.embed(tokens, cu, max_len)
        hidden = model(tokens, cu, max_len)
    sd = model.state_dict()
    for i, a in enumerate(ids):
        ref = reference_hidden(sd, model.config, torch.from_numpy(a))
        got = hidden[cu[i]:cu[i + 1]]
        print(f"12-layer seq {i}: cos {cos(emb[i], ref.mean(0)).item():.8f}, "
              f"max abs diff {(got.double() - ref).abs().max().item():.3e}")
        assert cos(got, ref).min().item() >= 0.9999
        assert cos(emb[i], ref.mean(0)).item() >= 0.9999


def test_packing_invariance(small_model):
    model, tok = small_model
    rng = np.random.default_rng(2)
    ids = [tok.encode(random_dna(rng, int(n))) for n in rng.integers(20, 500, 8)]
    with torch.inference_mode():
        together = model.embed(*pack(ids))
        for i, a in enumerate(ids):
            alone = model.embed(*pack([a]))[0]
            assert cos(alone, together[i]).item() >= 0.9999
        # and in another order
        perm = [3, 0, 7, 5, 1, 6, 2, 4]
        shuffled = model.embed(*pack([ids[j] for j in perm]))
    assert cos(shuffled, together[perm]).min().item() >= 0.9999


def test_embed_is_segment_mean(small_model):
    model, tok = small_model
    ids = [tok.encode("ACGT" * 10), tok.encode("GGGCCCAAT"), tok.encode("TTTTACGA" * 30)]
    tokens, cu, m = pack(ids)
    with torch.inference_mode():
        h = model(tokens, cu, m)
        e = model.embed(tokens, cu, m)
    for i in range(3):
        torch.testing.assert_close(e[i], h[cu[i]:cu[i + 1]].mean(0), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- tokenizer

@needs_shared
def test_tokenizer_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(SHARED_TOK / f, tmp_path / f)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    raw = DnaBertSTokenizer(SHARED_TOK / "tokenizer.json")          # padding 2000 in the file
    nopad = DnaBertSTokenizer(SHARED_TOK / "tokenizer.nopad.json")
    packaged = DnaBertSTokenizer()
    rng = np.random.default_rng(3)
    seqs = [random_dna(rng, int(n)) for n in rng.integers(5, 2500, 15)] + ["A", "NNNN", "acgtACGT"]
    for s in seqs:
        u = s.upper()
        want = np.asarray(hf(u)["input_ids"], dtype=np.int64)
        got = packaged.encode(s)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(raw.encode(s), want)
        np.testing.assert_array_equal(nopad.encode(s), want)
        np.testing.assert_array_equal(packaged.encode(s.lower()), want)
        assert got[0] == 1 and got[-1] == 2
    batch = packaged.encode_batch(seqs)
    for s, b in zip(seqs, batch):
        np.testing.assert_array_equal(b, packaged.encode(s))


def test_tokenizer_pickle_and_estimate():
    tok = DnaBertSTokenizer()
    tok.encode("ACGT")                            # loaded Tokenizer must not travel
    tok2 = pickle.loads(pickle.dumps(tok))
    assert tok2._tok is None and tok2.path == tok.path
    np.testing.assert_array_equal(tok2.encode("ACGTTGCA"), tok.encode("ACGTTGCA"))
    rng = np.random.default_rng(4)
    for n in (150, 500):
        seqs = ["".join(rng.choice(list("ACGT"), n)) for _ in range(200)]
        counts = np.array([len(a) for a in tok.encode_batch(seqs)])
        est = tok.estimate_tokens(n)
        print(f"{n} bp: mean {n / (counts.mean() - 2):.3f} bases/token, "
              f"max {counts.max()} tokens, estimate {est}")
        assert counts.max() <= est
        assert est <= 1.35 * counts.mean()        # not wildly pessimistic


# --------------------------------------------------------------------------- loading

@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_save_load_roundtrip(tmp_path, small_model, fmt):
    model, tok = small_model
    d = save_hf_dir(model, tmp_path / "m", fmt=fmt)
    assert (d / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")).is_file()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["BertModel"]
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (d / f).is_file()
    m2, tok2 = load_dnabert_s(d)
    assert m2.config == model.config and not m2.training
    ids = [tok2.encode("ACGTNacgtTTGACCA" * 7), tok2.encode("GATTACA" * 30)]
    for a, b in zip(ids, [tok.encode("ACGTNacgtTTGACCA" * 7), tok.encode("GATTACA" * 30)]):
        np.testing.assert_array_equal(a, b)
    with torch.inference_mode():
        assert torch.equal(m2.embed(*pack(ids)), model.embed(*pack(ids)))
    m3, _ = load_dnabert_s(d, dtype=torch.bfloat16)
    assert m3.embeddings.word_embeddings.weight.dtype == torch.bfloat16


def test_wrong_keys_error(tmp_path, small_model):
    model, _ = small_model
    d = save_hf_dir(model, tmp_path / "m", fmt="safetensors")
    (d / "model.safetensors").unlink()
    esm_like = {"embed_tokens.weight": torch.zeros(33, 8), "layers.0.self_attn.q_proj.weight": torch.zeros(8, 8)}
    torch.save(esm_like, d / "pytorch_model.bin")
    with pytest.raises(DnaBertSCheckpointError, match="ESM checkpoint") as e:
        load_dnabert_s(d)
    assert f"missing ({len(model.state_dict())})" in str(e.value) and "embed_tokens.weight" in str(e.value)
    # one key dropped, one renamed
    sd = dict(model.state_dict())
    sd["encoder.layer.0.mlp.gated.weight"] = sd.pop("encoder.layer.0.mlp.gated_layers.weight")
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(DnaBertSCheckpointError, match="gated_layers"):
        load_dnabert_s(d)


def test_missing_files_errors(tmp_path, small_model):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download zhihan1996/DNABERT-S") as e:
        load_dnabert_s(tmp_path / "nope")
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        load_dnabert_s("no-such-owner-xyz/no-such-model-xyz")
    d = save_hf_dir(small_model[0], tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_dnabert_s(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_dnabert_s(d)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))        # creates the marker file when unpickled


def test_malicious_pickle_refused(tmp_path, small_model):
    d = save_hf_dir(small_model[0], tmp_path / "m", fmt="bin")
    marker = tmp_path / "pwned"
    torch.save({"embeddings.word_embeddings.weight": _Evil(str(marker))}, d / "pytorch_model.bin")
    with pytest.raises(DnaBertSCheckpointError, match="refused"):
        load_dnabert_s(d)
    assert not marker.exists()
    # the file really is dangerous: an unsafe load would have run it
    torch.load(d / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_packaged_tokenizer_is_the_nopad_file():
    if (SHARED_TOK / "tokenizer.nopad.json").is_file():
        assert PACKAGED_TOKENIZER.read_bytes() == (SHARED_TOK / "tokenizer.nopad.json").read_bytes()
    assert PACKAGED_TOKENIZER.is_file()


# --------------------------------------------------------------------------- adapter (load_model)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory, small_model):
    return save_hf_dir(small_model[0], tmp_path_factory.mktemp("small") / "dnabert")


def _batch(tok, seed=5, n=9):
    rng = np.random.default_rng(seed)
    ids = [tok.encode(random_dna(rng, int(k))) for k in rng.integers(10, 300, n)]
    return ids, pack_token_arrays(ids, list(range(n)))


def test_adapter_layer_k_is_k_layers_of_the_reference(small_dir):
    """Layer k (0 = embeddings) equals DNABERT-2's BertModel run for k layers; several layers in one pass
    equal one-layer calls; the default is the last layer, the module's own embed (the old path)."""
    model = load_model(str(small_dir))
    assert (model.dim, model.num_layers, model.molecule, model.name) == (192, 2, "dna", "DNABERT-S")
    ids, batch = _batch(model.tokenizer)
    sd = model.module.state_dict()
    with torch.inference_mode():
        many = model.embed(batch, (1, 0, -1), per_token=True)
        old = model.module.embed(batch.tokens, batch.cu_seqlens, batch.max_seqlen)
        default = model.embed(batch)
        for k, layer in enumerate((1, 0, 2)):
            one = model.embed(batch, (layer,), per_token=True)
            assert torch.equal(many.pooled[k], one.pooled[0]) and torch.equal(many.tokens[k], one.tokens[0])
    assert torch.equal(default.pooled[0], old) and torch.equal(many.pooled[2], old)
    assert many.token_lengths.tolist() == [len(a) for a in ids]  # [CLS] ... [SEP], every token
    cu = batch.cu_seqlens.tolist()
    for k, layer in enumerate((1, 0, 2)):
        cfg = dataclasses.replace(SMALL, num_hidden_layers=layer)
        for i, a in enumerate(ids):
            ref = reference_hidden(sd, cfg, torch.from_numpy(a))
            got = many.tokens[k][cu[i]:cu[i + 1]]
            assert (got.double() - ref).abs().max().item() < 1e-3, (layer, i)
            assert cos(many.pooled[k][i], ref.mean(0)).item() >= 0.9999
    assert not torch.allclose(many.pooled[0], many.pooled[2])


def test_adapter_layer_out_of_range(small_dir):
    """--repr-layer 99 with DNABERT-S used to return the last layer silently."""
    model = load_model(str(small_dir))
    _, batch = _batch(model.tokenizer, n=2)
    for bad in (3, 99, -4):
        with pytest.raises(LayerError, match=r"outside DNABERT-S's layers: 0\.\.2 ") as e:
            model.embed(batch, (bad,))
        assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert model.check_layers((-3, -1)) == (0, 2)


def test_tiny_random_dnabert_for_demos():
    m = load_model("dnabert-s-tiny", random_init=True, seed=2)
    assert (m.dim, m.num_layers, m.name) == (128, 2, "DNABERT-S-tiny")
    assert m.module.config == DNABERT_S_TINY and m.attrs["random_weights"] and "RANDOM" in m.attrs["warning"]
    assert m.source.startswith("random-init")
    _, batch = _batch(m.tokenizer, n=3)
    with torch.inference_mode():
        out = m.embed(batch)
    assert out.pooled[0].shape == (3, 128) and torch.isfinite(out.pooled[0]).all()
    with pytest.raises(ModelLoadError, match="--random-init"):
        load_model("dnabert-s-tiny")


def test_empty_directory_says_what_is_missing(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    with pytest.raises(ModelLoadError) as e:
        load_model(str(d))
    msg = str(e.value)
    assert str(d) in msg and "empty directory" in msg and "config.json" in msg and "tokenizer.json" in msg
    assert "does not exist" not in msg and "\n" not in msg
    (d / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="lacks: config.json, model.safetensors or pytorch_model.bin"):
        load_model(str(d))
