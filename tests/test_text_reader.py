"""Readers and sentence splitter of bert_jax.data.text_reader, on hand-made files and the shared Wikipedia dump."""

import gzip
import os
import re
import shutil

import pytest

from bert_jax.data import text_reader

WIKI = "../shared/data/wikipedia"


# ----------------------------------------------------------------------------------------------------
# Sentence splitting
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        # Titles before names do not end sentences.
        ("Dr. Smith went home. He slept.", ["Dr. Smith went home.", "He slept."]),
        ("Mr. and Mrs. Jones met St. Peter in Feb. 1990.", ["Mr. and Mrs. Jones met St. Peter in Feb. 1990."]),
        # Dotted acronyms: inside a sentence unless a typical sentence opener follows.
        ("The U.S. Army fought. It won.", ["The U.S. Army fought.", "It won."]),
        ("He moved to the U.S. The move was hard.", ["He moved to the U.S.", "The move was hard."]),
        ("Rain falls at 5 p.m. The sun sets.", ["Rain falls at 5 p.m.", "The sun sets."]),
        # Latin abbreviations, whatever follows.
        ("Some fruits, e.g. Apples, are red. Others, i.e. Bananas, are not.",
         ["Some fruits, e.g. Apples, are red.", "Others, i.e. Bananas, are not."]),
        # Initials.
        ("J. R. R. Tolkien wrote it. George W. Bush read it.", ["J. R. R. Tolkien wrote it.", "George W. Bush read it."]),
        # Decimals and numbers.
        ("Pi is 3.14 or so. It was 1990. 1991 came next.", ["Pi is 3.14 or so.", "It was 1990.", "1991 came next."]),
        ("See Fig. 3 and No. 5 in vol. 2 of it.", ["See Fig. 3 and No. 5 in vol. 2 of it."]),
        # Quotes and brackets after the stop stay with the sentence.
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("(It was late.) Everyone left.", ["(It was late.)", "Everyone left."]),
        ('"Why?" she asked. "Because!" He ran.', ['"Why?" she asked.', '"Because!"', "He ran."]),
        # Ellipses: a boundary only before a capital.
        ("Wait... what? Then... Nothing.", ["Wait... what?", "Then...", "Nothing."]),
        ("It went on\u2026 And on.", ["It went on\u2026", "And on."]),
        # Lower case after a stop never starts a sentence; no space, no split.
        ("It costs approx. five dollars. See www.example.com. Done.",
         ["It costs approx. five dollars.", "See www.example.com.", "Done."]),
        ("Next sentence starts with a quote. \u201cYes,\u201d he said.", ["Next sentence starts with a quote.",
                                                                       "\u201cYes,\u201d he said."]),
        # Whitespace is normalised; empty text has no sentence.
        ("  One.\t Two.  ", ["One.", "Two."]),
        ("   ", []),
        # An empty parenthesis after a stop: the next word decides.
        ("Avan Pithana? () is a film. It is old.", ["Avan Pithana? () is a film.", "It is old."]),
    ],
)
def test_split_sentences(text, expected):
    assert text_reader.split_sentences(text) == expected


def test_split_sentences_keeps_every_character():
    """On real paragraphs, joining the sentences with spaces gives back the (space-normalised) paragraph."""
    with open(os.path.join(WIKI, "wiki_01"), encoding="utf-8") as f:
        paragraphs = [line.strip() for line in f if line.strip() and not line.startswith("<")][:400]
    total = 0
    for paragraph in paragraphs:
        sentences = text_reader.split_sentences(paragraph)
        assert " ".join(sentences) == " ".join(paragraph.split())
        assert all(s == s.strip() and s for s in sentences)
        total += len(sentences)
    assert total > len(paragraphs) * 1.3  # real paragraphs do get split


# ----------------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------------


def _write(path, text, mode="w"):
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        f.write(text)
    return str(path)


def test_sentence_per_line_format(tmp_path):
    path = _write(tmp_path / "a.txt", "First doc one.\nFirst doc two.\n\n\nSecond doc.\n  \nThird a.\nThird b.")
    docs = list(text_reader.iter_file_documents(path))
    assert [d.sentences for d in docs] == [["First doc one.", "First doc two."], ["Second doc."], ["Third a.", "Third b."]]
    assert [d.line for d in docs] == [1, 5, 7]


def test_paragraph_per_line_format(tmp_path):
    path = _write(tmp_path / "p.txt", "Dr. A came. He left.\nSecond paragraph.\n\nOther doc. Two sentences.\n")
    docs = list(text_reader.iter_file_documents(path, fmt="paragraphs"))
    assert [d.sentences for d in docs] == [["Dr. A came.", "He left.", "Second paragraph."],
                                          ["Other doc.", "Two sentences."]]


def test_wikiextractor_format_drops_title_and_tags(tmp_path):
    text = ('<doc id="1" url="u" title="Alpha">\nAlpha\n\nAlpha is a letter. It is first.\nHistory.\n\n</doc>\n'
            '<doc id="2" url="u" title="Empty">\nEmpty\n\n</doc>\n'
            '<doc id="3" url="u" title="Beta">\nBeta\nBeta is second.\n</doc>\n')
    path = _write(tmp_path / "wiki_00", text)
    stats = text_reader.ReadStats()
    docs = list(text_reader.iter_file_documents(path, stats=stats))  # auto-detected
    assert [d.sentences for d in docs] == [["Alpha is a letter.", "It is first.", "History."], ["Beta is second."]]
    assert stats.skipped == {"empty documents": 1}
    assert stats.examples["empty documents"] == [f"{path}:8"]


def test_real_wikiextractor_file_document_count():
    """Every <doc> of a real file is either read or counted as empty; no title line survives."""
    path = os.path.join(WIKI, "wiki_02")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    articles = re.findall(r'<doc [^>]*title="([^"]*)">\n(.*?)</doc>', raw, flags=re.S)
    with_text = [(title, body) for title, body in articles if body.strip().split("\n", 1)[1:] and
                 body.strip().split("\n", 1)[1].strip()]
    stats = text_reader.ReadStats()
    docs = list(text_reader.iter_file_documents(path, stats=stats))
    assert len(docs) == len(with_text)
    assert stats.documents + stats.skipped["empty documents"] == len(articles)
    for doc, (title, body) in zip(docs, with_text):
        _title_line, rest = body.strip().split("\n", 1)  # the title line is not part of the text
        paragraphs = [p for p in rest.split("\n") if p.strip()]
        assert doc.sentences == [s for p in paragraphs for s in text_reader.split_sentences(p)]


# ----------------------------------------------------------------------------------------------------
# Files, globs, directories, gzip, resumption
# ----------------------------------------------------------------------------------------------------


def test_resolve_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    a = _write(tmp_path / "d" / "b.txt", "x\n")
    b = _write(tmp_path / "d" / "sub" / "a.txt", "y\n")
    _write(tmp_path / "d" / ".hidden", "z\n")
    assert text_reader.resolve_input_files(str(tmp_path / "d")) == [a, b]
    assert text_reader.resolve_input_files(str(tmp_path / "d" / "*.txt")) == [a]
    assert text_reader.resolve_input_files(f"{b},{tmp_path / 'd' / '*.txt'},{b}") == [b, a]
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        text_reader.resolve_input_files(str(tmp_path / "nothere.txt"))
    with pytest.raises(FileNotFoundError, match=r"\*\.gz"):
        text_reader.resolve_input_files(str(tmp_path / "d" / "*.gz"))


def test_gzip_reads_like_plain(tmp_path):
    plain = os.path.join(WIKI, "wiki_03")
    packed = str(tmp_path / "wiki_03.gz")
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    docs_plain = [d.sentences for d in text_reader.iter_file_documents(plain)]
    docs_gz = [d.sentences for d in text_reader.iter_file_documents(packed)]
    assert docs_plain == docs_gz and len(docs_plain) > 100


@pytest.mark.parametrize("gz", [False, True])
def test_resume_from_document_offset(tmp_path, gz):
    path = os.path.join(WIKI, "wiki_04")
    if gz:
        packed = str(tmp_path / "w.gz")
        with open(path, "rb") as src, gzip.open(packed, "wb") as dst:
            shutil.copyfileobj(src, dst)
        path = packed
    docs = list(text_reader.iter_file_documents(path))
    for k in (0, 1, 57, len(docs) - 2):
        rest = list(text_reader.iter_file_documents(path, start_offset=docs[k].end_offset))
        assert [d.sentences for d in rest] == [d.sentences for d in docs[k + 1 :]]


def test_blank_separated_resume_from_offsets(tmp_path):
    path = _write(tmp_path / "s.txt", "a1\na2\n\nb1\n\n\nc1\nc2\nc3\n\nd1")
    docs = list(text_reader.iter_file_documents(path))
    assert [d.sentences for d in docs] == [["a1", "a2"], ["b1"], ["c1", "c2", "c3"], ["d1"]]
    for k, doc in enumerate(docs):
        rest = list(text_reader.iter_file_documents(path, start_offset=doc.end_offset))
        assert [d.sentences for d in rest] == [d.sentences for d in docs[k + 1 :]]


# ----------------------------------------------------------------------------------------------------
# Bad input: counted, with the file and line
# ----------------------------------------------------------------------------------------------------


def test_non_utf8_lines_are_counted_with_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.txt", b"good one\n\xff\xfe broken\nstill good\n\nnext doc\n", "wb")
    stats = text_reader.ReadStats()
    docs = list(text_reader.iter_file_documents(path, stats=stats))
    assert [d.sentences for d in docs] == [["good one", "still good"], ["next doc"]]
    assert stats.skipped == {"non-UTF-8 lines": 1}
    assert stats.examples["non-UTF-8 lines"][0].startswith(f"{path}:2 ")
    assert "1 non-UTF-8 lines" in stats.describe_skips()


def test_empty_files_and_documents_are_counted(tmp_path):
    empty = _write(tmp_path / "empty.txt", "")
    blank = _write(tmp_path / "blank.txt", "\n\n  \n")
    stats = text_reader.ReadStats()
    assert list(text_reader.iter_documents([empty, blank], stats=stats)) == []
    assert stats.files == 2
    assert stats.skipped == {"files without any document": 2}
    assert stats.to_dict()["skipped_examples"]["files without any document"] == [empty, blank]


def test_unknown_format_is_a_clear_error(tmp_path):
    path = _write(tmp_path / "x.txt", "a\n")
    with pytest.raises(ValueError, match="x.txt"):
        list(text_reader.iter_file_documents(path, fmt="markdown"))


def test_stats_merge():
    a, b = text_reader.ReadStats(), text_reader.ReadStats()
    a.skip("r", "f:1")
    b.skip("r", "f:2")
    b.skip("q", "g:3")
    b.documents, b.sentences, b.files = 2, 5, 1
    a.merge(b)
    assert a.skipped == {"r": 2, "q": 1} and a.examples["r"] == ["f:1", "f:2"]
    assert (a.documents, a.sentences, a.files) == (2, 5, 1)


def test_tfds_host_ranges_partition_the_split():
    for n, count in [(10, 3), (7, 2), (5, 5), (3, 4)]:
        ranges = [text_reader.tfds_host_range(n, i, count) for i in range(count)]
        covered = [k for lo, hi in ranges for k in range(lo, hi)]
        assert covered == list(range(n))
