"""No file the user hands us is ever unpickled freely: a repo-wide scan of src/.

Every ``torch.load(`` (also inside code kept in strings, e.g. the classifier's writer
script) passes ``weights_only=True``; nothing says ``weights_only=False``; no
``pickle``/``marshal``/``dill`` loads, no ``np.load(..., allow_pickle=True)``, no
unsafe ``yaml.load``. That a malicious pickle in place of a checkpoint does not run is
proven per loader: test_esm2.py, test_dnabert_s.py, test_classifier.py
(``test_malicious_*``).
"""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

FORBIDDEN = {
    r"weights_only\s*=\s*False": "weights_only=False",
    r"\b(c?pickle|dill|marshal|joblib)\.(load|loads|Unpickler)\b": "an unrestricted unpickler",
    r"allow_pickle\s*=\s*True": "np.load(allow_pickle=True)",
    r"\byaml\.(load|unsafe_load)\(": "yaml.load (use yaml.safe_load)",
    r"from\s+torch\s+import\s+[^\n]*\bload\b": "torch.load imported under another name",
    r"torch\.serialization\.load\(": "torch.serialization.load",
}


def _calls(text: str, name: str) -> list[tuple[int, str]]:
    """(line, argument text) of every ``name(...)`` in ``text``, parentheses balanced."""
    out = []
    for m in re.finditer(re.escape(name) + r"\s*\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        out.append((text.count("\n", 0, m.start()) + 1, text[m.end():i - 1]))
    return out


def _problems(text: str) -> list[str]:
    found = [f"line {line}: torch.load without weights_only=True"
             for line, args in _calls(text, "torch.load") if not re.search(r"weights_only\s*=\s*True", args)]
    for pattern, what in FORBIDDEN.items():
        found += [f"line {text.count(chr(10), 0, m.start()) + 1}: {what}" for m in re.finditer(pattern, text)]
    return found


def test_src_has_no_unsafe_loads():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20, f"found only {len(files)} files under {SRC}"
    problems = [f"{p.relative_to(SRC)} {msg}" for p in files for msg in _problems(p.read_text(encoding="utf-8"))]
    assert not problems, "unsafe deserialisation in src/:\n" + "\n".join(problems)
    loads = sum(len(_calls(p.read_text(encoding="utf-8"), "torch.load")) for p in files)
    assert loads >= 3  # the scan sees the real loaders (ESM-2, DNABERT-S, classifier)


def test_the_scan_catches_each_pattern():
    bad = '''
x = torch.load(path)
y = torch.load(
    path, map_location="cpu",
    weights_only=False)
z = torch.load(f(a, b), mmap=True)  # weights_only=True only in a comment after the call
import pickle; pickle.load(fh)
np.load(p, allow_pickle=True)
yaml.load(s)
from torch import load as tload
'''
    found = _problems(bad)
    assert sum("torch.load without weights_only=True" in f for f in found) == 3, found
    for what in ("weights_only=False", "unrestricted unpickler", "allow_pickle", "yaml.load", "another name"):
        assert any(what in f for f in found), (what, found)
    assert _problems('torch.load(p, map_location="cpu", weights_only=True, mmap=True)') == []
