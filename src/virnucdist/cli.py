"""The ``virnucdist`` console script.

Subcommands live in :data:`COMMANDS` (name -> :class:`Command`); add one by
writing an ``add_arguments(parser)`` and a ``run(args) -> int`` and registering
them there. User errors (bad FASTA, missing file, invalid values) end with ONE line
``virnucdist: error: ...`` on stderr and exit status 2, without a traceback; set
``VIRNUCDIST_DEBUG=1`` to see the traceback anyway. A reader that closes the pipe early
(``virnucdist inspect --json | head``) ends the command quietly with status 141.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from virnucdist.errors import UserError
from virnucdist.data.fasta import write_fasta
from virnucdist.data.index import read_fasta

__all__ = ["Command", "COMMANDS", "build_parser", "main"]

PROG = "virnucdist"


@dataclass(frozen=True)
class Command:
    """A subcommand: one-line help, its argument definitions and its body."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"{value}: no such file")
    if not path.is_file():
        raise ValueError(f"{value}: not a file")
    return path


@contextlib.contextmanager
def _output(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; it becomes ``path`` only on success."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --- chunk -------------------------------------------------------------------------


def _chunk_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="reads (FASTA or FASTQ, plain or .gz)")
    p.add_argument(
        "--chunk-size", type=int, choices=(300, 500), required=True,
        help="chunk length; must match the classifier (300_model.pth -> 300, 500_model.pth -> 500)",
    )
    p.add_argument("-o", "--output", required=True, help="chunked FASTA to write")


def _chunk_run(args: argparse.Namespace) -> int:
    from virnucdist.vnp.chunk import ChunkStats, chunk_records

    stats = ChunkStats()
    records = read_fasta(_existing_file(args.input))
    with _output(args.output) as tmp:
        written = write_fasta(tmp, chunk_records(records, args.chunk_size, stats))
    _say(f"chunk: {stats.reads} reads in, {written} chunks out, {stats.empty_reads} empty reads skipped")
    if stats.empty_read_ids:
        shown = ", ".join(stats.empty_read_ids[:5]) + (", ..." if stats.empty_reads > 5 else "")
        _say(f"chunk: empty reads skipped: {shown}")
    return 0


# --- translate ---------------------------------------------------------------------


def _translate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="chunked FASTA (output of `virnucdist chunk`)")
    p.add_argument("--nucleotide-out", help="kept frames' nucleotide records (default: {input stem}_identified_nucleotide.fa)")
    p.add_argument("--protein-out", help="kept frames' proteins (default: {input stem}_identified_protein.faa)")


def _translate_run(args: argparse.Namespace) -> int:
    from virnucdist.vnp.translate import translate_records

    src = _existing_file(args.input)
    stem = src.with_suffix("") if src.suffix != ".gz" else src.with_suffix("").with_suffix("")
    nuc_out = args.nucleotide_out or f"{stem}_identified_nucleotide.fa"
    prot_out = args.protein_out or f"{stem}_identified_protein.faa"
    n_chunks = 0

    def counted():
        nonlocal n_chunks
        for rec in read_fasta(src):
            n_chunks += 1
            yield rec

    kept = 0
    with _output(nuc_out) as nuc_tmp, _output(prot_out) as prot_tmp, open(prot_tmp, "w") as prot_fh:

        def frames():
            nonlocal kept
            for frame in translate_records(counted()):
                prot_fh.write(f">{frame.id}\n{frame.protein}\n")
                kept += 1
                yield frame.id, frame.nucleotide

        write_fasta(nuc_tmp, frames())
    _say(f"translate: {n_chunks} chunks in, {kept} frames kept (of {6 * n_chunks})")
    return 0


# --- consensus ---------------------------------------------------------------------


def _consensus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="prediction_results.txt")
    p.add_argument(
        "-o", "--output",
        help="per-chunk decisions (default: prediction_results_highestscore.csv beside the input)",
    )


def _consensus_run(args: argparse.Namespace) -> int:
    from virnucdist.vnp.consensus import consensus, read_predictions, write_consensus

    src = _existing_file(args.input)
    out = args.output or str(src.parent / "prediction_results_highestscore.csv")
    rows = list(read_predictions(src))
    decisions = consensus(rows)
    with _output(out) as tmp:
        write_consensus(tmp, decisions)
    n_virus = sum(1 for _, v in decisions if v)
    _say(f"consensus: {len(rows)} frames in, {len(decisions)} chunks out, {n_virus} virus")
    return 0


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a run directory (OUTDIR) or an .h5 file")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def _inspect_run(args: argparse.Namespace) -> int:
    import json

    from virnucdist.inspection import describe, format_description

    d = describe(args.path)
    print(json.dumps(d, indent=2, default=str) if args.json else format_description(d))
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("outdir", help="a run directory (OUTDIR, holding run_report.json) or a run_report.json")
    p.add_argument("--png", action="store_true", help="also write the figures as OUTDIR/report-*.png")


def _report_run(args: argparse.Namespace) -> int:
    from virnucdist.report import ReportError, write_report

    try:
        page = write_report(args.outdir, png=args.png)
    except ReportError as e:  # no matplotlib, no run report: one line
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    _say(f"report: wrote {page}" + (" and its figures as report-*.png" if args.png else ""))
    return 0


def _cds_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="GenBank flat files (.gbff/.gb, plain or .gz)")
    p.add_argument("-o", "--output", required=True, help="FASTA of the coding sequences to write")


def _cds_run(args: argparse.Namespace) -> int:
    from virnucdist.vnp.genbank import iter_cds

    paths = [_existing_file(p) for p in args.inputs]
    with _output(args.output) as tmp:
        written = write_fasta(tmp, (rec for path in paths for rec in iter_cds(path)))
    _say(f"cds: {written} coding sequences from {len(args.inputs)} file(s) -> {args.output}")
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("flags", nargs="*", help="the flags of python -m virnucdist.train (see its --help)")


def _train_run(args: argparse.Namespace) -> int:  # reached only through main(), which hands the flags over
    return _train(args.flags)


def _train(flags: list[str]) -> int:
    from virnucdist.launch.entry import run_entrypoint
    from virnucdist.tasks.train import main as train_main

    run_entrypoint(train_main, flags)  # exits with the run's code
    return 0


COMMANDS: dict[str, Command] = {
    "chunk": Command("cut reads into VirNucPro chunks (300 or 500 bp)", _chunk_args, _chunk_run),
    "translate": Command("six-frame translate chunks, keep stop-free frames", _translate_args, _translate_run),
    "consensus": Command("per-chunk virus calls from prediction_results.txt", _consensus_args, _consensus_run),
    "inspect": Command("what a run produced: model, counts, dims, report, resumable state", _inspect_args, _inspect_run),
    "report": Command("a run's report as one HTML page with plots (needs matplotlib)", _report_args, _report_run),
    "cds": Command("coding sequences of GenBank files as FASTA (for train --frames annotated)", _cds_args, _cds_run),
    "train": Command("train VirNucPro's classifier on --viral/--other sequences (as python -m virnucdist.train)",
                     _train_args, _train_run),
}


#: the run commands: ``virnucdist embed ...`` is ``python -m virnucdist.embed ...`` (the same flags; one process,
#: or under torchrun with ``-m virnucdist.embed``)
RUNS = {
    "embed": "embed FASTA/FASTQ records with ESM-2 or DNABERT-S into embeddings.h5 (torchrun: -m virnucdist.embed)",
    "predict": "VirNucPro virus calls for reads, one pass (torchrun: -m virnucdist.predict)",
}


def build_parser() -> argparse.ArgumentParser:
    from virnucdist._version import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="Distributed embedding and VirNucPro read identification.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in RUNS.items():  # listed here; their flags are the entrypoint's (``virnucdist NAME --help``)
        sub.add_parser(name, help=text, add_help=False)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # the train task's own parser and one-line error handling
        return _train(argv[1:])
    if argv and argv[0] in RUNS:
        import importlib

        from virnucdist.launch.entry import run_entrypoint

        task = importlib.import_module(f"virnucdist.tasks.{argv[0]}")
        run_entrypoint(task.main, argv[1:])  # exits with the run's status
    args = build_parser().parse_args(argv)
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _closed_stdout()
    except (UserError, OSError, ValueError) as exc:
        if os.environ.get("VIRNUCDIST_DEBUG"):
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _closed_stdout() -> int:
    """The reader of our stdout went away (``virnucdist inspect --json | head``): stop quietly.

    Point stdout at /dev/null so that the interpreter's final flush does not print
    "Exception ignored ... BrokenPipeError"; exit status 141 (128 + SIGPIPE), what a
    process killed by SIGPIPE (``cat``) gives.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    raise SystemExit(main())
