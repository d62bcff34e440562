"""GenBank coding sequences (``virnucdist cds``) and training on VirNucPro's annotated frame."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from virnucdist.cli import main as cli_main
from virnucdist.data.index import read_fasta
from virnucdist.vnp.genbank import GenBankError, annotated_frame, iter_cds
from virnucdist.vnp.translate import six_frame

_COMP = str.maketrans("ACGT", "TGCA")


def _gbff(records) -> str:
    """GenBank text: records are (locus, [(location, {qualifier: value})], sequence)."""
    out = []
    for locus, feats, seq in records:
        out += [f"LOCUS       {locus}  {len(seq)} bp    DNA     linear   VRL 01-JAN-2020",
                f"DEFINITION  synthetic {locus}.", "FEATURES             Location/Qualifiers",
                f"     source          1..{len(seq)}", '                     /organism="synthetic"']
        for loc, quals in feats:
            first, rest = loc[:50], loc[50:]
            out.append(f"     CDS             {first}")
            while rest:
                out.append(f"                     {rest[:50]}")
                rest = rest[50:]
            out += [f"                     /{k}" + (f'="{v}"' if v is not None else "") for k, v in quals.items()]
            out.append('                     /translation="MADEUP"')
        out.append("ORIGIN")
        for i in range(0, len(seq), 60):
            chunk = " ".join(seq[i + j:i + j + 10].lower() for j in range(0, 60, 10))
            out.append(f"{i + 1:>9} {chunk.strip()}")
        out.append("//")
    return "\n".join(out) + "\n"


def test_cds_locations_strands_codon_start_and_stops(tmp_path):
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), size=400))
    join = ",".join(f"{a}..{b}" for a, b in [(11, 40), (51, 90), (101, 130), (141, 170)])  # a long wrapped location
    feats = [(f"join({join})", {"protein_id": "P1.1"}),
             ("complement(201..260)", {"protein_id": "P2.1"}),
             ("<301..>345", {"codon_start": "2"}),
             ("complement(join(351..360,371..390))", {}),
             ("1..30", {"pseudo": None}),
             ("OTHER01.1:1..30", {})]
    path = tmp_path / "x.gbff.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(_gbff([("LOC1", feats, seq)]))
    got = dict(iter_cds(path))

    def cut(x):
        x = x[: len(x) - len(x) % 3]
        return x[:-3] if x[-3:] in ("TAA", "TAG", "TGA") else x

    rc = lambda s: s.translate(_COMP)[::-1]  # noqa: E731
    want = {"LOC1_P1.1": cut(seq[10:40] + seq[50:90] + seq[100:130] + seq[140:170]),
            "LOC1_P2.1": cut(rc(seq[200:260])),
            "LOC1_cds3": cut(seq[300:345][1:]),
            "LOC1_cds4": cut(rc(seq[350:360] + seq[370:390]))}
    assert got == want  # the pseudogene and the remote location are skipped
    out = tmp_path / "cds.fa"
    assert cli_main(["cds", str(path), "-o", str(out)]) == 0
    assert [(r.id, r.seq) for r in read_fasta(out)] == list(want.items())


def test_annotated_frame_reads_the_cds_codons():
    rng = np.random.default_rng(1)
    sense = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")]
    cds = "".join(rng.choice(sense, size=60))
    for offset in range(6):
        frames = {f.id[-2:]: f.protein for f in six_frame("", cds[offset:offset + 100])}
        name = annotated_frame(offset)
        first = (-offset) % 3
        assert name in frames and frames[name].startswith(
            "".join(_aa(cds[offset + first + 3 * i: offset + first + 3 * i + 3]) for i in range(3)))


def _aa(codon):
    from virnucdist.vnp.translate import CODON_TABLE

    return CODON_TABLE[codon]


def test_not_genbank_is_one_line(tmp_path):
    bad = tmp_path / "x.gb"
    bad.write_text(">seq\nACGT\n")
    with pytest.raises(GenBankError, match="no GenBank records"):
        list(iter_cds(bad))
    cut = tmp_path / "cut.gb"
    cut.write_text(_gbff([("L", [], "ACGT" * 20)]).rsplit("//", 1)[0])
    with pytest.raises(GenBankError, match="cut short"):
        list(iter_cds(cut))
