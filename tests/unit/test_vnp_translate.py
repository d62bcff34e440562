"""Six-frame translation (spec section 2), against the reference and Biopython."""

from __future__ import annotations

import pytest
from Bio.Seq import Seq
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucdist.data.index import read_fasta
from virnucdist.vnp.translate import CODON_TABLE, Frame, reverse_complement, six_frame, translate_records


def test_reference_translation(shared_dir):
    ref = shared_dir / "data" / "virnucpro-reference"
    frames = list(translate_records(read_fasta(ref / "test_with_orfs_chunked500.fa")))
    nuc = [(r.id, r.seq) for r in read_fasta(ref / "test_with_orfs_identified_nucleotide.fa")]
    prot = [(r.id, r.seq) for r in read_fasta(ref / "test_with_orfs_identified_protein.faa")]
    assert nuc and [(f.id, f.nucleotide) for f in frames] == nuc
    assert [(f.id, f.protein) for f in frames] == prot


def test_codon_table_is_ncbi_1():
    assert len(CODON_TABLE) == 64
    for codon, aa in CODON_TABLE.items():
        assert str(Seq(codon).translate(table=1)) == aa


def _expected(chunk_id: str, seq: str) -> list[Frame]:
    """Spec section 2 written naively, with Biopython doing the translation (ACGT only)."""
    fwd = seq.upper()
    rev = str(Seq(fwd).reverse_complement())
    out = []
    for strand, src in (("F", fwd), ("R", rev)):
        for o in range(3):
            codons = src[o : o + 3 * ((len(src) - o) // 3)]
            protein = str(Seq(codons).translate()) if codons else ""
            if protein and "*" not in protein:
                out.append(Frame(f"{chunk_id}{strand}{o + 1}", src[o : o + 3 * len(protein) + 1], protein))
    return out


@settings(max_examples=300, deadline=None)
@given(seq=st.text(alphabet="ACGTacgt", min_size=0, max_size=120))
def test_matches_biopython_on_acgt(seq):
    assert six_frame("c", seq) == _expected("c", seq)


@settings(max_examples=100, deadline=None)
@given(seq=st.text(alphabet="ACGT", min_size=3, max_size=60))
def test_kept_frames_are_exactly_stop_free(seq):
    kept = {f.id[-2:] for f in six_frame("c", seq)}
    rev = str(Seq(seq).reverse_complement())
    for strand, src in (("F", seq), ("R", rev)):
        for o in range(3):
            n = (len(src) - o) // 3
            protein = str(Seq(src[o : o + 3 * n]).translate()) if n else ""
            assert (f"{strand}{o + 1}" in kept) == (bool(protein) and "*" not in protein)


def test_non_acgt_codons_dropped_and_off_by_one():
    # F1 codons: ATG, NNA (dropped), AAA, TTT -> "MKF"; nucleotide = src[0 : 0 + 3*3 + 1].
    seq = "ATGNNAAAATTT"
    f1 = six_frame("x", seq)[0]
    assert f1.id == "xF1"
    assert f1.protein == "MKF"
    assert f1.nucleotide == seq[:10] == "ATGNNAAAAT"


def test_lowercase_is_uppercased_and_rc_keeps_n():
    assert reverse_complement("ACGTNRY") == "YRNACGT"
    frames = {f.id: f for f in six_frame("x", "atgnnnaaa")}
    assert frames["xF1"].protein == "MK"
    assert frames["xF1"].nucleotide == "ATGNNNA"
    # Reverse complement TTTNNNCAT: TTT, NNN (dropped), CAT -> "FH"
    assert frames["xR1"].protein == "FH"
    assert frames["xR1"].nucleotide == "TTTNNNC"


def test_stop_anywhere_excludes_frame_and_short_inputs():
    ids = [f.id for f in six_frame("x", "ATGTAA")]  # F1 = M* (terminal stop): excluded
    assert "xF1" not in ids
    assert six_frame("x", "") == [] and six_frame("x", "AT") == []
    assert six_frame("x", "NNNNNN") == []  # all codons dropped -> empty proteins dropped


def test_chunk_500_lengths():
    # A stop-free 500-bp chunk: 166 aa, 499 nt for offsets 0/1 and 498 nt for offset 2.
    seq = ("GCT" * 200)[:500]
    frames = {f.id[-2:]: f for f in six_frame("c", seq)}
    for name, nt in (("F1", 499), ("F2", 499), ("F3", 498)):
        assert len(frames[name].protein) == 166
        assert len(frames[name].nucleotide) == nt


@pytest.mark.parametrize("records", [[("a", "ATGAAA"), ("b", "TTTCCC")], [("x", "atgGCTtaa"), ("y", "AAAA"), ("z", "")]])
def test_translate_records_order(records):
    """Every record's kept frames, record by record, as the Biopython-based reference gives them."""
    got = list(translate_records(records))
    assert got == [f for cid, s in records for f in _expected(cid, s)]
    order = [cid for cid, _ in records]
    which = [order.index(f.id[:-2]) for f in got]  # chunk order, then frame order
    assert which == sorted(which) and len(set(which)) == 2


def test_translate_chunks_is_six_frame_of_each_chunk():
    """The batched path (chunks of one length in ACGT as a matrix) gives six_frame's frames, in order,
    whatever the mix: lengths 0-9 and 150, lower case, N and IUPAC letters, U, non-ASCII."""
    import numpy as np

    from virnucdist.vnp.translate import translate_chunks

    rng = np.random.default_rng(3)
    letters = np.array(list("ACGTACGTACGTacgtNRYU"))
    chunks = []
    for i in range(600):
        n = int(rng.choice([0, 1, 2, 3, 4, 5, 7, 9, 150, 150, 150]))
        seq = "".join(rng.choice(letters[:4] if i % 3 else letters, n))
        chunks.append((f"c{i}_chunk_1", seq))
    chunks += [("u1", "ATGéAAACCC"), ("u2", "ATGAAAß"), ("s", "TAATAATAA"), ("m", "ATGAAACCCGGG")]
    want = [f for cid, s in chunks for f in six_frame(cid, s)]
    assert translate_chunks(chunks) == want and len(want) > 300
    assert list(translate_records(chunks, batch=7)) == want
