"""Tokenizers: the contract the packing loader relies on, and the two models' tokenizers.

Tokenizers are small picklable objects (they travel into DataLoader worker
processes); models never do. This file imports numpy only (``tokenizers`` lazily).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["SequenceTokenizer", "EsmTokenizer", "DnaBertSTokenizer", "PACKAGED_TOKENIZER", "ESM_TOKENS"]


class SequenceTokenizer(Protocol):
    """Turns one sequence (str) into token ids, specials included."""

    def encode(self, seq: str) -> np.ndarray:
        """int64 token ids of one sequence, with the model's special tokens added."""
        ...

    def estimate_tokens(self, length: int) -> int:
        """Tokens that :meth:`encode` yields for a sequence of ``length`` letters
        (an upper bound: exact for ESM-2 unless a stop is stripped; an estimate
        for BPE). Used to fill the token budget before tokenizing."""
        ...


# Optional, looked up with getattr by the packing loader:
#   is_truncated(length) -> bool   the record is cut to a length cap (counted as truncated)
#   unk_id: int                    the unknown token; records containing it are counted
#                                  (run_report.json: records_with_unknown_letters)
#   has_terminal_stop(seq) -> bool encode() drops one trailing '*' of this record (ESM-2)
#   unknown_letters(seq) -> list   the letters of seq that encode() makes unk_id (for messages)


# --------------------------------------------------------------------------- ESM-2

#: fair-esm's "ESM-1b" alphabet
ESM_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"]
CLS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 32
VOCAB = len(ESM_TOKENS)  # 33
STOP = "*"


class EsmTokenizer:
    """Residues -> fair-esm token ids with BOS/EOS; truncates like extract.py.

    Gene callers (Prodigal, transeq) end proteins with ``*``, which fair-esm would
    make ``<unk>``: with ``strip_stop`` (the default) ONE terminal ``*`` is dropped
    before encoding; :meth:`has_terminal_stop` tells the caller so it can count it.
    Any other ``*`` stays ``<unk>`` (and is counted as an unknown letter).
    """

    unk_id = UNK  # letters outside the alphabet (digits, '*', 'J'...) become <unk>; the loader counts them

    def __init__(self, truncation_seq_length: int | None = 1022, strip_stop: bool = True):
        self.truncation_seq_length = truncation_seq_length
        self.strip_stop = strip_stop
        table = np.full(256, UNK, dtype=np.int64)
        for i, tok in enumerate(ESM_TOKENS):
            if len(tok) == 1:
                table[ord(tok)] = i
                table[ord(tok.lower())] = i  # fair-esm is case-sensitive; lowercase would all be <unk>
        self._table = table

    def __repr__(self):
        return f"EsmTokenizer(truncation_seq_length={self.truncation_seq_length}, strip_stop={self.strip_stop})"

    def has_terminal_stop(self, seq: str) -> bool:
        """True when :meth:`encode` drops a trailing ``*`` of ``seq``."""
        return self.strip_stop and seq.endswith(STOP)

    def encode(self, seq: str) -> np.ndarray:
        if self.strip_stop and seq.endswith(STOP):
            seq = seq[:-1]
        if self.truncation_seq_length is not None:
            seq = seq[: self.truncation_seq_length]
        ids = np.empty(len(seq) + 2, dtype=np.int64)
        ids[0], ids[-1] = CLS, EOS
        ids[1:-1] = self._table[np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)]
        return ids

    def unknown_letters(self, seq: str) -> list[str]:
        """Sorted letters of ``seq`` that :meth:`encode` makes ``<unk>`` (a stripped terminal stop is not one)."""
        if self.has_terminal_stop(seq):
            seq = seq[:-1]
        return sorted(c for c in set(seq) if self._table[ord(c) if ord(c) < 256 else ord("?")] == UNK)

    def estimate_tokens(self, length: int) -> int:
        if self.truncation_seq_length is not None:
            length = min(length, self.truncation_seq_length)
        return length + 2

    def is_truncated(self, length: int) -> bool:
        return self.truncation_seq_length is not None and length > self.truncation_seq_length


# --------------------------------------------------------------------------- DNABERT-S

PACKAGED_TOKENIZER = Path(__file__).resolve().parent / "dnabert_s_tokenizer.json"

# Mean bases per token measured on uniform random ACGT (500 sequences each):
#   150 bp: 4.62 (min 4.05), 300 bp: 4.66 (min 4.17), 500 bp: 4.68 (min 4.35),
#   1000 bp: 4.70, 2000 bp: 4.71.
# 4.0 bases/token (+2 specials) bounds every random sequence measured from 150 bp
# up; repetitive DNA gives fewer tokens (longer merges). Runs of N (or other
# non-ACGT letters) give one [UNK] per letter, so N-rich reads can exceed it.
BASES_PER_TOKEN = 4.0


class DnaBertSTokenizer:
    """The DNABERT-S BPE tokenizer (``SequenceTokenizer``): upper-cases input and
    returns ``[CLS] ... [SEP]`` ids as int64. Picklable: only the path travels;
    the ``tokenizers.Tokenizer`` is loaded lazily in each process."""

    cls_id = 1
    sep_id = 2
    pad_id = 3
    unk_id = 0

    def __init__(self, path: str | os.PathLike = PACKAGED_TOKENIZER):
        self.path = str(path)
        self._tok = None

    @property
    def tokenizer(self):
        if self._tok is None:
            import multiprocessing

            from tokenizers import Tokenizer

            if multiprocessing.parent_process() is not None:  # a DataLoader worker: one thread each, the
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are the parallelism

            tok = Tokenizer.from_file(self.path)
            # the upstream tokenizer.json keeps training-time padding/truncation to 2000
            tok.no_padding()
            tok.no_truncation()
            self._tok = tok
        return self._tok

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._tok = None

    def __repr__(self):
        return f"DnaBertSTokenizer({self.path!r})"

    def encode(self, seq: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(seq.upper()).ids, dtype=np.int64)

    def encode_batch(self, seqs: list[str]) -> list[np.ndarray]:
        tok = self.tokenizer
        # encode_batch_fast (tokenizers >= 0.20): the same ids without character offsets, ~1.7x the reads/s
        encode = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
        return [np.asarray(e.ids, dtype=np.int64) for e in encode([s.upper() for s in seqs])]

    def unknown_letters(self, seq: str) -> list[str]:
        """Sorted letters of ``seq`` that the tokenizer makes ``[UNK]`` (each letter tried alone)."""
        return sorted(c for c in set(seq) if (self.encode(c) == self.unk_id).any())

    def estimate_tokens(self, length: int) -> int:
        return math.ceil(length / BASES_PER_TOKEN) + 2
