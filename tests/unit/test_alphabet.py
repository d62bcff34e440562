"""What a file holds (DNA, RNA, protein) from the index's letter counts, and the one-line refusal."""

import numpy as np
import pytest

from virnucdist.data.alphabet import Molecule, WrongMoleculeError, check_molecule, molecule_of
from virnucdist.errors import UserError
from virnucdist.data.fasta import write_fasta
from virnucdist.data import SequenceIndex

RNG = np.random.default_rng(7)
# a real protein (ubiquitin) and random reads
PROTEIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
DNA = "".join(RNG.choice(list("ACGT"), 3000))


def _counts(text: str) -> np.ndarray:
    return np.bincount(np.frombuffer(text.encode(), np.uint8), minlength=256)


@pytest.mark.parametrize("text,kind", [
    (DNA, "dna"),
    (DNA.lower(), "dna"),
    (DNA[:1000] + "N" * 20 + "RYKM", "dna"),                 # IUPAC codes and Ns are still DNA
    (DNA.replace("T", "U"), "rna"),
    (DNA.replace("T", "u").lower(), "rna"),
    (PROTEIN * 20, "protein"),
    ((PROTEIN + "*") * 20, "protein"),                        # stop codons from a gene caller
    ("GAGAGAGSGGAGS" * 10 + PROTEIN, "protein"),              # glycine/alanine-rich, still protein
    (DNA[:600] + PROTEIN * 8, "protein"),                     # half DNA, half protein (by letters)
    (DNA + PROTEIN * 2, "dna"),                               # mostly DNA, a few proteins
    (DNA[:600] + "-" * 200, "unknown"),                       # an alignment with many gaps
    ("1234567890-" * 20, "unknown"),
    ("", "unknown"),
])
def test_verdicts(text, kind):
    mol = molecule_of(_counts(text))
    assert mol.kind == kind, mol
    assert mol.letters == len(text)


def test_fractions_and_descriptions():
    mol = molecule_of(_counts("ACGTN" * 199 + "EEEEE"))
    assert mol == Molecule("dna", 1000, 0.995, 0.0, 0.199, 0.005)
    assert mol.describe() == "looks like DNA: 99.5% of 1,000 letters are A/C/G/T/N"
    rna = molecule_of(_counts("ACGU" * 25))
    assert rna.describe() == "looks like RNA: 100.0% of 100 letters are A/C/G/U/N (25.0% U)"
    prot = molecule_of(_counts(PROTEIN))
    nuc = sum(PROTEIN.count(c) for c in "ACGTN") / len(PROTEIN)
    assert prot.nucleotide == pytest.approx(nuc) and prot.protein_only == pytest.approx(1 - nuc)
    assert prot.describe().startswith(f"looks like protein: {100 * (1 - nuc):.1f}% of {len(PROTEIN)} letters")
    assert molecule_of(np.zeros(256, np.int64)).describe() == "holds no sequence letters"


def test_check_molecule_on_an_index(tmp_path):
    reads = tmp_path / "reads.fa"
    write_fasta(reads, [(f"r{i}", DNA[i * 150:(i + 1) * 150]) for i in range(20)])
    prots = tmp_path / "prots.fa"
    write_fasta(prots, [(f"p{i}", PROTEIN) for i in range(5)])
    dna_idx = SequenceIndex.build([reads])
    with pytest.raises(WrongMoleculeError) as info:
        check_molecule(dna_idx, "protein", "esm2_t33_650M_UR50D", "--allow-any-molecule")
    msg = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in msg
    assert msg == (f"{reads} looks like DNA: 100.0% of 3,000 letters are A/C/G/T/N, but esm2_t33_650M_UR50D "
                   "reads protein; give it the right input, or pass --allow-any-molecule to run it anyway")
    assert check_molecule(dna_idx, "dna", "DNABERT-S", "--allow-any-molecule").kind == "dna"
    assert check_molecule(dna_idx, "nucleotide", "VirNucPro", "--allow-any-molecule").kind == "dna"
    both = SequenceIndex.build([prots, reads])              # the wrong file is the one named
    with pytest.raises(WrongMoleculeError, match=f"^{prots} looks like protein: .* but DNABERT-S reads DNA; "):
        check_molecule(both, "dna", "DNABERT-S", "--allow-any-molecule")
    with pytest.raises(WrongMoleculeError, match=f"^{reads} looks like DNA"):
        check_molecule(both, "protein", "ESM-2", "--allow-any-molecule")


def test_check_molecule_on_counts():
    rna = _counts(DNA.replace("T", "U"))
    assert check_molecule(rna, "nucleotide", "VirNucPro", "--x").kind == "rna"
    with pytest.raises(WrongMoleculeError, match="^the input looks like RNA: .* but DNABERT-S reads DNA; .* --x "):
        check_molecule(rna, "dna", "DNABERT-S", "--x")
    mixed = _counts(DNA[:600] + "-" * 200 + "*" * 20)     # unknown is never refused
    assert check_molecule(mixed, "protein", "ESM-2", "--x").kind == "unknown"
    assert check_molecule(mixed, "dna", "DNABERT-S", "--x").kind == "unknown"
    with pytest.raises(ValueError, match="expected must be one of"):
        check_molecule(mixed, "DNA", "DNABERT-S", "--x")
