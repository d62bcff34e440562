"""DNABERT-S tokenisation through the fast batch path: ids equal the Hugging Face tokenizer's own encode."""

import numpy as np

from virnucdist.models.tokenization import DnaBertSTokenizer

IUPAC = list("NRYSWKMBDHV")


def _reads(n=400, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.choice([1, 2, 5, 150, 151, 300, 500, 1000]))
        letters = rng.choice(list("ACGT"), size=length)
        if i % 3 == 0:  # N runs and other IUPAC codes
            k = rng.integers(0, length, size=max(1, length // 20))
            letters[k] = rng.choice(IUPAC, size=len(k))
        if i % 4 == 0 and length > 20:
            letters[5:15] = "N"
        s = "".join(letters)
        out.append(s.lower() if i % 7 == 0 else s)
    return out


def test_batch_ids_equal_the_tokenizers_own_encode():
    tok = DnaBertSTokenizer()
    reads = _reads()
    got = tok.encode_batch(reads)
    for s, ids in zip(reads, got):
        want = tok.tokenizer.encode(s.upper()).ids  # the plain HF encode, with offsets
        assert ids.dtype == np.int64 and ids.tolist() == want, s
        assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert any((ids == tok.unk_id).any() for ids in got)  # IUPAC letters reached [UNK]
