"""Reading inputs: FASTA/FASTQ scanning, the sequence index and its cache, alphabet checks."""

from .fasta import FastaError, FastaRecord, write_fasta
from .index import SequenceIndex, quick_identity, read_fasta
from .inputs import InputFile

__all__ = ["FastaError", "FastaRecord", "read_fasta", "write_fasta", "SequenceIndex", "quick_identity",
           "InputFile"]
