"""data/samples.py: sample sheets (names, files, comments, header) and their one-line errors."""

from __future__ import annotations

import pytest

from virnucdist.data.samples import SampleSheetError, read_sheet


@pytest.fixture
def files(tmp_path):
    for n in ("a_R1.fq", "a_R2.fq", "b.fq", "c_R1.fq", "c_R2.fq"):
        (tmp_path / n).write_text("@r\nACGT\n+\nIIII\n")
    return tmp_path


def sheet(tmp_path, text):
    p = tmp_path / "sheet.tsv"
    p.write_text(text)
    return p


def test_sheet_with_header_comments_single_and_paired(files):
    p = sheet(files, "# run 42\nsample\tR1\tR2\n\nS-1\ta_R1.fq\ta_R2.fq\n# a comment\nS_2\tb.fq\n"
                     f"S.3\t{files / 'c_R1.fq'}\tc_R2.fq\t\n")
    got = read_sheet(p)
    assert [(s.name, [f.rsplit('/', 1)[1] for f in s.files], s.line) for s in got] == [
        ("S-1", ["a_R1.fq", "a_R2.fq"], 4), ("S_2", ["b.fq"], 6), ("S.3", ["c_R1.fq", "c_R2.fq"], 7)]
    assert all(f.startswith(str(files)) for s in got for f in s.files)  # relative to the sheet's folder
    assert [s.paired_files for s in got] == [True, False, True]


@pytest.mark.parametrize("text, words", [
    ("S1\ta_R1.fq\nS1\tb.fq\n", ["line 2", "'S1'", "line 1", "unique"]),
    ("S1\ta_R1.fq\ns1\tb.fq\n", ["line 2", "'s1'", "unique"]),
    ("../x\ta_R1.fq\n", ["'../x'", "folder name"]),
    ("S 1\ta_R1.fq\n", ["'S 1'", "folder name"]),
    ("shards\ta_R1.fq\n", ["'shards'", "folder name"]),
    ("S1\ta_R1.fq\nS2\tmissing.fq\n", ["line 2", "'S2'", "missing.fq", "does not exist"]),
    ("S1\ta_R1.fq\nS2\ta_R1.fq\n", ["line 2", "'S2'", "a_R1.fq", "'S1'"]),
    ("S1 a_R1.fq\n", ["line 1", "tabs"]),
    ("S1\ta_R1.fq\ta_R2.fq\tb.fq\n", ["line 1", "4 column"]),
    ("# nothing\n", ["lists no sample"]),
])
def test_bad_sheets_are_one_line(files, text, words):
    with pytest.raises(SampleSheetError) as e:
        read_sheet(sheet(files, text))
    msg = str(e.value)
    assert "\n" not in msg and "sheet.tsv" in msg
    for w in words:
        assert w in msg, msg


def test_a_missing_file_on_the_first_line_is_not_taken_for_a_header(files):
    with pytest.raises(SampleSheetError, match="line 1: sample 'S1': file .*gone_R1.fastq.gz does not exist"):
        read_sheet(sheet(files, "S1\tgone_R1.fastq.gz\tgone_R2.fastq.gz\n"))
