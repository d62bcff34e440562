"""MLP classifier and its safe checkpoint loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from virnucdist.errors import UserError
from virnucdist.models.classifier import (
    MLPClassifier,
    check_input_dim,
    classifier_chunk_size_hint,
    load_classifier,
)
from virnucdist.models.random_init import random_classifier, random_state_dict
from _formats import save_random_classifier


@pytest.fixture(scope="module")
def pickled(tmp_path_factory):
    """A whole-module pickle written the way train.py does, plus its probe logits."""
    d = tmp_path_factory.mktemp("clf")
    path, probe = d / "500_model.pth", d / "probe.pt"
    save_random_classifier(path, seed=7, fmt="pickle", probe_path=probe)
    return path, torch.load(probe, weights_only=True)


def test_pickle_references_main_class(pickled):
    path, _ = pickled
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert "__main__.MLPClassifier" in names


def test_pickled_module_loads_with_same_outputs(pickled):
    path, probe = pickled
    model = load_classifier(path)
    assert type(model) is MLPClassifier and not model.training
    with torch.no_grad():
        logits = model(probe["x"])
    torch.testing.assert_close(logits, probe["logits"], rtol=0, atol=0)
    # BN running stats came through (not the defaults 0/1).
    assert not torch.allclose(model.bn1.running_var, torch.ones(512))


@pytest.mark.parametrize("fmt, name", [("state_dict", "w.pth"), ("safetensors", "w.safetensors"), ("safetensors", "w.bin")])
def test_state_dict_and_safetensors(tmp_path, pickled, fmt, name):
    _, probe = pickled
    path = save_random_classifier(tmp_path / name, seed=7, fmt=fmt)
    model = load_classifier(path)
    with torch.no_grad():
        torch.testing.assert_close(model(probe["x"]), probe["logits"], rtol=0, atol=0)


def test_state_dict_keys_match_original():
    keys = set(MLPClassifier().state_dict())
    assert keys == set(random_state_dict(0)) == {
        "hidden_layer.weight", "hidden_layer.bias",
        "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
        "output_layer.weight", "output_layer.bias",
    }


def test_forward_is_linear_bn_relu_linear_in_eval():
    torch.manual_seed(0)
    model = MLPClassifier()
    model.load_state_dict(random_state_dict(1))
    model.eval()
    x = torch.randn(4, 3328)
    h = model.hidden_layer(x)
    bn = model.bn1
    h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    want = model.output_layer(torch.relu(h))
    with torch.no_grad():
        torch.testing.assert_close(model(x), want)


_EVIL = r'''
import os, sys
import torch, torch.nn as nn

class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))

class MLPClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden_layer = nn.Linear(3328, 512)
        self.bn1 = nn.BatchNorm1d(512)
        self.dropout = nn.Dropout(0.5)
        self.output_layer = nn.Linear(512, 2)
        self.payload = Payload()

torch.save(MLPClassifier(), sys.argv[1])
'''


def test_malicious_pickle_is_refused(tmp_path):
    evil, marker = tmp_path / "500_model.pth", tmp_path / "PWNED"
    subprocess.run([sys.executable, "-c", _EVIL, str(evil), str(marker)], check=True)
    assert not marker.exists()
    with pytest.raises(ValueError) as err:
        load_classifier(evil)
    msg = str(err.value)
    assert str(evil) in msg and "system" in msg and "refused" in msg
    assert not marker.exists()


def test_wrong_shapes_give_clear_error(tmp_path):
    state = random_state_dict(0)
    state["hidden_layer.weight"] = torch.zeros(256, 3328)  # another hidden width (the input width may vary)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"other\.pth: these weights do not fit a VirNucPro MLP") as e:
        load_classifier(path)
    assert isinstance(e.value, UserError)


@pytest.mark.parametrize("fmt", ["pickle", "safetensors"])
def test_classifier_sized_to_small_models(tmp_path, fmt):
    """A random classifier for DNABERT-S-tiny (128) + esm2_t6_8M_UR50D (320): a CPU demo of predict."""
    path, probe = tmp_path / "300_model.pth", tmp_path / "probe.pt"
    save_random_classifier(path, seed=3, fmt=fmt, probe_path=probe, input_dim=448)
    model = load_classifier(path, expected_input_dim=(128, 320))
    assert model.hidden_layer.in_features == 448 and not model.training
    probe = torch.load(probe, weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(probe["x"]), probe["logits"], rtol=0, atol=0)
        torch.testing.assert_close(random_classifier(448, seed=3)(probe["x"]), probe["logits"], rtol=0, atol=0)
    with pytest.raises(ValueError) as e:
        load_classifier(path, expected_input_dim=(768, 2560))
    msg = str(e.value)
    assert str(path) in msg and "takes 448 values" in msg and "--esm-model gives 768 + 2560 = 3328: ESM-2 width 2560 (esm2_t36_3B_UR50D)" in msg
    assert isinstance(e.value, UserError) and "\n" not in msg
    with pytest.raises(UserError, match="takes 448 values per frame, but the models give 3328"):
        check_input_dim(model, 3328, path)


def test_messages_have_no_ansi_codes(tmp_path):
    """torch's weights_only errors carry ANSI bold codes and advice to load unsafely: none of it reaches the user."""
    subprocess.run([sys.executable, "-c", "import torch; torch.save(torch.nn.GELU(), __import__('sys').argv[1])",
                    str(tmp_path / "gelu.pth")], check=True)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80" + bytes(range(1, 200)))
    for path in (tmp_path / "gelu.pth", bad):
        with pytest.raises(ValueError) as e:
            load_classifier(path)
        msg = str(e.value)
        assert str(path) in msg and "\x1b" not in msg and "\n" not in msg and "weights_only` set to `False" not in msg


def test_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth") as e:
        load_classifier(tmp_path / "missing.pth")
    assert isinstance(e.value, UserError)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_classifier(text)
    lists = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], lists)
    with pytest.raises(ValueError, match="holds a list"):
        load_classifier(lists)


def test_wrapped_state_dicts(tmp_path):
    state = random_state_dict(3)
    for i, obj in enumerate([{"state_dict": state}, {f"module.{k}": v for k, v in state.items()}]):
        torch.save(obj, tmp_path / f"{i}.pt")
        model = load_classifier(tmp_path / f"{i}.pt")
        torch.testing.assert_close(model.output_layer.bias, state["output_layer.bias"])


@pytest.mark.parametrize(
    "name, size", [("300_model.pth", 300), ("/x/500_model.pth", 500), ("my_300_model_v2.pt", 300), ("model.pth", None)]
)
def test_chunk_size_hint(name, size):
    assert classifier_chunk_size_hint(Path(name)) == size


def test_a_classifier_trained_with_another_hidden_width_loads(tmp_path):
    """``virnucdist train --hidden-dim 64`` writes a 64-unit MLP: predict's loader takes the width from the weights."""
    from virnucdist.vnp.training import save_virnucpro_classifier

    torch.manual_seed(0)
    trained = MLPClassifier(448, 64).eval()
    path = save_virnucpro_classifier(trained, tmp_path / "classifier.pth")
    model = load_classifier(path, expected_input_dim=(128, 320))
    assert model.hidden_layer.out_features == 64 and model.bn1.num_features == 64
    x = torch.randn(5, 448)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)
