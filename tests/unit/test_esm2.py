"""Packed ESM-2 against fair-esm's own ESM2.forward, and checkpoint loading."""

from __future__ import annotations

import os
import pickle

import esm
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from esm.model.esm2 import ESM2

from virnucdist.errors import UserError
from virnucdist.models.errors import LayerError
from virnucdist.models.esm2 import MASK, ESM2Config
from virnucdist.models.loading import ModelLoadError, esm_hub_path, load_model
from virnucdist.models.tokenization import UNK, EsmTokenizer
from virnucdist.packing import pack_token_arrays
from _formats import save_fair_esm_checkpoint
from _helpers import AA

RARE = list("XBUZO")
TRUNC = 1022


def _proteins(n: int = 40, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    lengths = [1, 2, 3, 1500] + [int(x) for x in rng.integers(4, 160, size=n - 4)]
    out = []
    for i, n_res in enumerate(lengths):
        letters = rng.choice(AA, size=n_res)
        if i % 5 == 0 and n_res > 4:
            letters[rng.integers(0, n_res, size=2)] = rng.choice(RARE, size=2)
        out.append((f"seq{i}", "".join(letters)))
    return out


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial LayerNorm parameters (default ones/zeros would hide a missing or swapped LN)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))
    return model


def _fair_esm_checkpoint(tmp_path, num_layers, dim, heads, seed, name="esm2_t6_8M_UR50D", token_dropout=True):
    """A random-weight fair-esm ESM2 written in fair-esm's file format, and fair-esm's own reload of it."""
    torch.manual_seed(seed)
    src = _perturb(ESM2(num_layers=num_layers, embed_dim=dim, attention_heads=heads,
                        token_dropout=token_dropout), seed).eval()
    path = save_fair_esm_checkpoint(src, tmp_path / f"{name}.pt")
    # fair-esm's own loader must accept the file (the on-disk layout is the real one)
    data = torch.load(path, map_location="cpu", weights_only=False)
    assert all(k.startswith("encoder.sentence_encoder.") for k in data["model"])
    ref, alphabet = esm.pretrained.load_model_and_alphabet_core(name, data, None)
    return path, ref.eval(), alphabet


def _fair_esm_embed(ref, alphabet, records, layers, batch_size=8):
    """extract.py-style residue means per layer, plus the last layer's per-token states."""
    conv = alphabet.get_batch_converter(truncation_seq_length=TRUNC)
    pooled = {l: [] for l in layers}
    tokens_last = []
    n_layers = ref.num_layers
    # the long record alone (a padded 1024-long batch of 8 would be wasteful), the rest in mixed batches
    groups = [[r] for r in records if len(r[1]) > 400]
    short = [r for r in records if len(r[1]) <= 400]
    groups += [short[i:i + batch_size] for i in range(0, len(short), batch_size)]
    order = []
    with torch.no_grad():
        for g in groups:
            _, strs, toks = conv(g)
            out = ref(toks, repr_layers=list(layers))["representations"]
            for i, s in enumerate(strs):
                n = min(TRUNC, len(s))
                for l in layers:
                    pooled[l].append(out[l][i, 1:n + 1].mean(0))
                if n_layers in layers:
                    tokens_last.append(out[n_layers][i, :n + 2])
            order += [r[0] for r in g]
    pos = {rid: k for k, rid in enumerate(order)}
    idx = [pos[rid] for rid, _ in records]
    return ({l: torch.stack(v)[idx] for l, v in pooled.items()},
            [tokens_last[k] for k in idx] if tokens_last else None)


def _ours(model, records, repr_layer, hidden=False):
    """Our pooled embeddings (the adapter's embed on packed batches: the long record alone, the rest
    packed 12 at a time) and, with ``hidden``, the per-token states of ``repr_layer``."""
    tok = model.tokenizer
    arrays = [tok.encode(s) for _, s in records]
    long = [i for i, (_, s) in enumerate(records) if len(s) > 400]
    short = [i for i in range(len(records)) if i not in long]
    groups = [[i] for i in long] + [short[k:k + 12] for k in range(0, len(short), 12)]
    pooled = [None] * len(records)
    states = [None] * len(records)
    with torch.inference_mode():
        for g in groups:
            batch = pack_token_arrays([arrays[i] for i in g], g)
            for i, v in zip(g, model.embed(batch, (repr_layer,)).pooled[0]):
                pooled[i] = v
            if hidden:
                h = model.module(batch.tokens, batch.positions, batch.seg, batch.cu_seqlens, batch.max_seqlen,
                                 repr_layer)
                cu = batch.cu_seqlens.tolist()
                for k, i in enumerate(g):
                    states[i] = h[cu[k]:cu[k + 1]]
    return torch.stack(pooled), states


def _compare(name, ours, ref, min_cos=0.9999):
    cos = F.cosine_similarity(ours.double(), ref.double(), dim=-1)
    diff = (ours - ref).abs().max().item()
    print(f"{name}: min cosine {cos.min().item():.8f}, max abs diff {diff:.3g}")
    bad = torch.nonzero(cos < min_cos).flatten().tolist()
    assert not bad, f"{name}: sequences {bad} have cosine {cos[bad].tolist()}"
    return diff


@pytest.fixture(scope="module")
def t6(tmp_path_factory):
    path, ref, alphabet = _fair_esm_checkpoint(tmp_path_factory.mktemp("t6"), 6, 320, 20, seed=1)
    return path, ref, alphabet


def test_packed_esm2_matches_fair_esm_t6(t6):
    path, ref, alphabet = t6
    records = _proteins(40)
    model = load_model(str(path), device="cpu", dtype=torch.float32, truncation_seq_length=TRUNC)
    assert model.kind == "esm2" and model.dim == 320 and model.module.cfg == ESM2Config(6, 320, 20, True)
    layers = (0, 3, 6)
    want, want_tokens = _fair_esm_embed(ref, alphabet, records, layers)
    assert model.module.resolve_layer(-1) == model.module.resolve_layer(6) == 6
    for layer, repr_layer in ((0, 0), (3, 3), (6, -1)):
        got, got_tokens = _ours(model, records, repr_layer, hidden=layer == 6)
        diff = _compare(f"t6 layer {repr_layer}", got, want[layer])
        assert diff < 1e-3
        if layer == 6:
            # per-token states too (BOS/EOS included), the long record truncated to 1024 tokens
            assert [len(t) for t in got_tokens] == [len(t) for t in want_tokens]
            assert len(got_tokens[3]) == TRUNC + 2
            tok_diff = max((a - b).abs().max().item() for a, b in zip(got_tokens, want_tokens))
            print(f"t6 per-token max abs diff {tok_diff:.3g}")
            assert tok_diff < 1e-3


def test_truncation_is_counted():
    tok = EsmTokenizer(TRUNC)
    assert tok.is_truncated(1500) and not tok.is_truncated(TRUNC)
    assert len(tok.encode("A" * 1500)) == TRUNC + 2 == tok.estimate_tokens(1500)


@pytest.mark.parametrize("token_dropout", [True, False])
def test_packed_esm2_matches_fair_esm_small_other_heads(tmp_path, token_dropout):
    """A 2-layer model with another head count and head size (dim 96, 12 heads of 8)."""
    path, ref, alphabet = _fair_esm_checkpoint(tmp_path, 2, 96, 12, seed=7, name="esm2_tiny",
                                               token_dropout=token_dropout)
    model = load_model(str(path), truncation_seq_length=TRUNC)
    assert model.module.cfg == ESM2Config(2, 96, 12, token_dropout)
    records = [r for r in _proteins(24, seed=3) if len(r[1]) < 400]
    want, _ = _fair_esm_embed(ref, alphabet, records, (1, 2))
    for layer, repr_layer in ((1, 1), (2, -1), (1, -2)):
        got, _ = _ours(model, records, repr_layer)
        _compare(f"2-layer layer {repr_layer}", got, want[layer])


def test_mask_token_ratio_matches_fair_esm(t6):
    """<mask> cannot come from FASTA; feed token ids directly (token_dropout rescaling path)."""
    path, ref, _ = t6
    model = load_model(str(path))
    rng = np.random.default_rng(5)
    arrays = []
    for n in (10, 25, 40, 7):
        ids = np.concatenate([[0], rng.integers(4, 24, size=n), [2]])
        ids[1 + rng.choice(n, size=max(1, n // 4), replace=False)] = MASK
        arrays.append(ids)
    batch = pack_token_arrays(arrays, list(range(len(arrays))))
    padded = torch.full((len(arrays), max(map(len, arrays))), 1, dtype=torch.int64)
    for i, a in enumerate(arrays):
        padded[i, :len(a)] = torch.from_numpy(a)
    with torch.inference_mode():
        ours = model.module(batch.tokens, batch.positions, batch.seg, batch.cu_seqlens, batch.max_seqlen, -1)
        ref_out = ref(padded, repr_layers=[0, 6])["representations"]
        ours0 = model.module(batch.tokens, batch.positions, batch.seg, batch.cu_seqlens, batch.max_seqlen, 0)
    cu = batch.cu_seqlens.tolist()
    for i, a in enumerate(arrays):
        torch.testing.assert_close(ours0[cu[i]:cu[i + 1]], ref_out[0][i, :len(a)], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours[cu[i]:cu[i + 1]], ref_out[6][i, :len(a)], atol=1e-4, rtol=1e-4)


def test_repr_layer_out_of_range(t6):
    model = load_model(str(t6[0]))
    for bad in (7, -8):
        with pytest.raises(ValueError, match="repr-layer"):
            model.module.resolve_layer(bad)
    assert model.module.resolve_layer(-7) == 0


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    """A 3-layer, 64-wide ESM-2 with random weights, through the tests' fair-esm writer (_formats.py) and load_model."""
    from virnucdist.models.random_init import random_esm2

    path = save_fair_esm_checkpoint(_perturb(random_esm2(ESM2Config(3, 64, 4), seed=4), 4),
                                    tmp_path_factory.mktemp("tiny3") / "esm2_tiny3.pt")
    return load_model(str(path))


def _short_batch(model, n=6, seed=9):
    recs = [r for r in _proteins(40, seed=seed) if len(r[1]) < 400][:n]
    return pack_token_arrays([model.tokenizer.encode(s) for _, s in recs], list(range(len(recs))))


def test_adapter_several_layers_in_one_pass(tiny3):
    """pooled of the default layer is the module's own mean (the old LoadedModel.embed); several layers
    from one pass equal one-layer calls; per-token states are the residues of the forward's output."""
    model = tiny3
    assert model.dim == 64 and model.num_layers == 3 and model.molecule == "protein"
    batch = _short_batch(model)
    b = batch
    with torch.inference_mode():
        old = model.module.embed(b.tokens, b.positions, b.seg, b.cu_seqlens, b.max_seqlen, -1)
        default = model.embed(batch)
        assert default.tokens is None and default.token_lengths is None and len(default.pooled) == 1
        assert default.pooled[0].dtype == torch.float32 and torch.equal(default.pooled[0], old)
        many = model.embed(batch, (0, -1, 2), per_token=True)
        assert model.check_layers((0, -1, 2)) == (0, 3, 2)
        assert torch.equal(many.pooled[1], default.pooled[0])
        cu = b.cu_seqlens.tolist()
        for k, layer in ((0, 0), (2, 2)):
            one = model.embed(batch, (layer,), per_token=True)
            assert torch.equal(many.pooled[k], one.pooled[0]), layer
            assert torch.equal(many.tokens[k], one.tokens[0]), layer
            assert torch.equal(many.token_lengths, one.token_lengths)
        for k, layer in ((1, 3), (2, 2)):  # per-token states: the residues of the forward's output
            hidden = model.module(b.tokens, b.positions, b.seg, b.cu_seqlens, b.max_seqlen, layer)
            want = torch.cat([hidden[cu[i] + 1:cu[i + 1] - 1] for i in range(b.num_seqs)]).float()
            assert torch.equal(many.tokens[k], want), layer
            torch.testing.assert_close(many.pooled[k], torch.stack(
                [hidden[cu[i] + 1:cu[i + 1] - 1].float().mean(0) for i in range(b.num_seqs)]), rtol=1e-5, atol=1e-6)
        assert many.token_lengths.tolist() == [cu[i + 1] - cu[i] - 2 for i in range(b.num_seqs)]
        # layers differ from each other (the hooks did not all read one tensor)
        assert not torch.allclose(many.pooled[0], many.pooled[2]) and not torch.allclose(many.pooled[1], many.pooled[2])


def test_adapter_layer_out_of_range(tiny3):
    model = tiny3
    for bad in (4, -5, 99):
        with pytest.raises(LayerError, match=r"outside esm2_tiny3's layers: 0\.\.3 ") as e:
            model.embed(_short_batch(model, 2), (bad,))
        assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(LayerError, match="twice"):
        model.check_layers((-1, 3))
    with pytest.raises(LayerError, match="no --repr-layer"):
        model.check_layers(())
    assert model.check_layers((-4,)) == (0,)


def test_terminal_stop_is_stripped_once():
    tok = EsmTokenizer()
    clean = tok.encode("MKVLAT")
    np.testing.assert_array_equal(tok.encode("MKVLAT*"), clean)
    assert tok.has_terminal_stop("MKVLAT*") and not tok.has_terminal_stop("MKVLAT")
    assert not tok.has_terminal_stop("MK*VL")
    inner = tok.encode("MK*VL")  # only a terminal stop goes; an inner one stays <unk>
    assert inner[3] == UNK and len(inner) == 7
    two = tok.encode("MKV**")
    assert len(two) == 6 and two[4] == UNK and two[-1] != UNK  # one stripped, the other counted as unknown
    keep = EsmTokenizer(strip_stop=False)
    assert keep.encode("MKVLAT*")[-2] == UNK and not keep.has_terminal_stop("MKVLAT*")
    np.testing.assert_array_equal(EsmTokenizer(4).encode("MKVLA*"), EsmTokenizer(4).encode("MKVLA"))
    assert tok.estimate_tokens(7) == 9  # unchanged: an upper bound
    assert tok.unknown_letters("MK*V1J*") == ["*", "1", "J"] and tok.unknown_letters("MKV*") == []
    assert load_model("esm2_t6_8M_UR50D", random_init=True, strip_stop=False).tokenizer.strip_stop is False


def test_terminal_stop_gives_the_clean_embedding(tiny3):
    model = tiny3
    seqs = ["MKVLATTGHRE", "ACDEFGHIKLMNPQ"]
    with torch.inference_mode():
        a = model.embed(pack_token_arrays([model.tokenizer.encode(s + "*") for s in seqs], [0, 1])).pooled[0]
        b = model.embed(pack_token_arrays([model.tokenizer.encode(s) for s in seqs], [0, 1])).pooled[0]
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- loading


def test_checkpoint_round_trip_from_packed_model(tmp_path):
    """save_fair_esm_checkpoint(PackedESM2) splits q/k/v back out; loading fuses them again."""
    a = load_model("esm2_t6_8M_UR50D", random_init=True, seed=3)
    path = save_fair_esm_checkpoint(a.module, tmp_path / "m.pt")
    data = torch.load(path, weights_only=False)
    assert "encoder.sentence_encoder.layers.0.self_attn.q_proj.weight" in data["model"]
    b = load_model(str(path))
    for (ka, va), (kb, vb) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_name_lookup_in_torch_hub_cache(tmp_path, monkeypatch, t6):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_network(*a, **k):
        raise AssertionError("must not download when the file is in the hub cache")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    want = tmp_path / "torch" / "hub" / "checkpoints" / "esm2_t6_8M_UR50D.pt"
    assert esm_hub_path("esm2_t6_8M_UR50D") == want
    want.parent.mkdir(parents=True)
    want.write_bytes(t6[0].read_bytes())
    m = load_model("esm2_t6_8M_UR50D")
    assert m.source == str(want) and m.name == "esm2_t6_8M_UR50D"
    direct = load_model(str(t6[0]))
    for va, vb in zip(m.module.state_dict().values(), direct.module.state_dict().values()):
        assert torch.equal(va, vb)


def test_missing_name_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    calls = []

    def no_network(url, dst, *a, **k):
        calls.append(url)
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ModelLoadError) as e:
        load_model("esm2_t6_8M_UR50D")
    msg = str(e.value)
    path = tmp_path / "torch" / "hub" / "checkpoints" / "esm2_t6_8M_UR50D.pt"
    assert calls == ["https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t6_8M_UR50D.pt"]
    assert str(path) in msg and "Download" in msg and "--random-init" in msg and "TORCH_HOME" in msg
    assert "\n" not in msg


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope.pt"))
    with pytest.raises(ModelLoadError, match="unknown model 'esm3_giant'"):
        load_model("esm3_giant")
    with pytest.raises(ModelLoadError, match="--random-init needs"):
        load_model("esm3_giant", random_init=True)


def test_bert_state_dict_is_refused(tmp_path):
    """A DNABERT-style (HF BERT) state dict renamed to .pt: no fair-esm cfg."""
    state = {"bert.embeddings.word_embeddings.weight": torch.zeros(4096, 768),
             "bert.encoder.layer.0.attention.self.query.weight": torch.zeros(768, 768)}
    path = tmp_path / "dnabert.pt"
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match="not a fair-esm ESM-2 checkpoint") as e:
        load_model(str(path))
    assert str(path) in str(e.value)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(ModelLoadError, match="not a loadable fair-esm checkpoint") as e:
        load_model(str(path))
    assert str(path) in str(e.value)


def test_wrong_shapes_are_refused(tmp_path):
    """cfg claims t6 (320 wide) but the tensors are 96 wide: a clear error, not a torch traceback."""
    small = ESM2(num_layers=6, embed_dim=96, attention_heads=12)
    path = save_fair_esm_checkpoint(small, tmp_path / "bad.pt")
    data = torch.load(path, weights_only=False)
    data["cfg"]["model"].encoder_embed_dim = 320
    data["cfg"]["model"].encoder_attention_heads = 20
    torch.save(data, path)
    with pytest.raises(ModelLoadError) as e:
        load_model(str(path))
    assert str(path) in str(e.value) and "right model file" in str(e.value)


def test_wrong_layer_count_is_refused(tmp_path):
    small = ESM2(num_layers=2, embed_dim=64, attention_heads=4)
    path = save_fair_esm_checkpoint(small, tmp_path / "bad.pt")
    data = torch.load(path, weights_only=False)
    data["cfg"]["model"].encoder_layers = 3
    torch.save(data, path)
    with pytest.raises(ModelLoadError, match="missing") as e:
        load_model(str(path))
    assert str(path) in str(e.value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "x.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "cfg": {"model": _Evil(marker)}}, path)
    with pytest.raises(ModelLoadError, match="not a loadable fair-esm checkpoint"):
        load_model(str(path))
    assert not marker.exists()
    # control: the payload is real (an unsafe load would have run it)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_malicious_raw_pickle_is_refused(tmp_path):
    """Not even a torch zip file: a bare pickle stream."""
    marker = tmp_path / "MARKER2"
    path = tmp_path / "y.pt"
    path.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ModelLoadError):
        load_model(str(path))
    assert not marker.exists()


def test_random_init_is_seeded():
    a = load_model("esm2_t6_8M_UR50D", random_init=True, seed=11).module.state_dict()
    b = load_model("esm2_t6_8M_UR50D", random_init=True, seed=11).module.state_dict()
    c = load_model("esm2_t6_8M_UR50D", random_init=True, seed=12).module.state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    differ = [k for k in a if not torch.equal(a[k], c[k])]
    assert "embed_tokens.weight" in differ and "layers.5.fc2.weight" in differ
    assert all(torch.isfinite(v).all() for v in a.values())


def test_non_checkpoint_files_give_one_clean_line(tmp_path):
    """A text file, a pickled module: one line, no torch internals (mmap advice, ANSI codes)."""
    text = tmp_path / "notes.pt"
    text.write_text("not weights\n")
    with pytest.raises(ModelLoadError) as e:
        load_model(str(text))
    msg = str(e.value)
    assert str(text) in msg and "not a PyTorch file" in msg and "fair-esm" in msg
    assert "mmap" not in msg and "\x1b" not in msg and "\n" not in msg and "_use_new_zipfile" not in msg
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)
    with pytest.raises(ModelLoadError) as e:
        load_model(str(module))
    msg = str(e.value)
    assert str(module) in msg and "torch.nn.modules.linear.Linear" in msg and "not allowed" in msg
    assert "\x1b" not in msg and "\n" not in msg and "weights_only` set to `False" not in msg
    assert isinstance(e.value, UserError)


def test_legacy_format_checkpoint_loads(tmp_path, t6):
    """A fair-esm .pt saved without the zip format cannot be memory-mapped; it still loads (safely)."""
    data = torch.load(t6[0], weights_only=False)
    legacy = tmp_path / "legacy.pt"
    torch.save(data, legacy, _use_new_zipfile_serialization=False)
    a, b = load_model(str(legacy)), load_model(str(t6[0]))
    for (ka, va), (kb, vb) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
