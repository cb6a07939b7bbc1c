"""The built-in corpus (CPython's documentation): determinism, size, format, and how clean the prose is.

The full corpus is built once per module (7-10 s); a second build in a fresh interpreter with another hash
seed checks that the bytes do not depend on the process. Counts are checked against the data engineer's
reader (`bert_jax.data.text_reader`) and against plain string operations written here.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bert_jax.data import builtin_corpus, text_reader

REPO = Path(__file__).resolve().parents[1]

# Markup that must not survive cleaning, and its tolerated rate per line.
ARTEFACTS = {
    "doctest prompt": (re.compile(r">>>"), 0.0),
    "reST role": (re.compile(r":[a-z]+(?::[a-z]+)?:`"), 0.0),
    "inline literal": (re.compile(r"``\w"), 0.0005),
    "directive": (re.compile(r"^\.\. |\s\.\. [a-z-]+::"), 0.0),
    "grammar production": (re.compile(r"::="), 0.0),
    "literal-block marker": (re.compile(r"\w::$"), 0.0),
    "heading underline": (re.compile(r"(\*\*\*\*|====|----|~~~~)"), 0.0005),
    "code statement": (re.compile(r"^(def|class|import|return|for|if|while) .*[:(]$|^\w+ = \S"), 0.002),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    paths = builtin_corpus.write_corpus(str(directory))
    return directory, paths


def read_documents(paths):
    """Documents as lists of lines, split here with plain string operations (the test's reference)."""
    documents = []
    for path in paths:
        text = Path(path).read_text(encoding="utf-8")
        documents += [block.split("\n") for block in text.strip("\n").split("\n\n")]
    return documents


def test_files_have_the_pretraining_format(corpus):
    _, paths = corpus
    assert 1 <= len(paths) <= 4
    assert [Path(p).name for p in paths] == [f"python_docs-{i:05d}-of-{len(paths):05d}.txt" for i in range(len(paths))]
    for path in paths:
        raw = Path(path).read_bytes()
        text = raw.decode("utf-8")  # raises if not UTF-8
        assert text.endswith("\n") and not text.endswith("\n\n"), path
        assert not text.startswith("\n"), path
        assert "\n\n\n" not in text, f"{path}: an empty document"
        assert "\r" not in text and "\t" not in text, path
        for number, line in enumerate(text.split("\n")[:-1], start=1):
            assert line == line.strip(), f"{path}:{number}: surrounding whitespace {line!r}"
            assert "  " not in line, f"{path}:{number}: double space {line!r}"


def test_stats_match_an_independent_count_and_the_reader(corpus):
    _, paths = corpus
    documents = read_documents(paths)
    expected = {
        "documents": len(documents),
        "sentences": sum(len(d) for d in documents),
        "words": sum(len(line.split()) for d in documents for line in d),
    }
    assert builtin_corpus.corpus_stats(paths) == expected

    read_stats = text_reader.ReadStats()
    read = list(text_reader.iter_documents(paths, fmt="sentences", stats=read_stats))
    assert [d.sentences for d in read] == documents
    assert not read_stats.skipped, read_stats.describe_skips()


def test_size_is_within_the_documented_bounds(corpus):
    _, paths = corpus
    stats = builtin_corpus.corpus_stats(paths)
    megabytes = sum(os.path.getsize(p) for p in paths) / 1e6
    # Measured on CPython 3.11.7: 1,254 documents, 21,182 sentences, 278,332 words, 1.72 MB. Bounds leave
    # room for other 3.x versions, whose standard library is somewhat larger or smaller.
    assert 700 <= stats["documents"] <= 3000, stats
    assert 10_000 <= stats["sentences"] <= 45_000, stats
    assert 150_000 <= stats["words"] <= 600_000, stats
    assert 1.0 <= megabytes <= 4.0, megabytes
    # Prose, not word lists: sentences average 8-30 words, documents hold several sentences.
    assert 8 <= stats["words"] / stats["sentences"] <= 30, stats
    assert stats["sentences"] / stats["documents"] >= 5, stats
    lone = sum(1 for d in read_documents(paths) if len(d) == 1)
    assert lone / stats["documents"] < 0.1, f"{lone} one-sentence documents"
    # The shards are balanced (documents are dealt round-robin).
    sizes = [os.path.getsize(p) for p in paths]
    assert max(sizes) <= 1.6 * min(sizes), sizes


def test_markup_artefacts_are_rare(corpus):
    _, paths = corpus
    lines = [line for d in read_documents(paths) for line in d]
    rates = {}
    for name, (pattern, tolerated) in ARTEFACTS.items():
        hits = [line for line in lines if pattern.search(line)]
        rates[name] = len(hits) / len(lines)
        assert rates[name] <= tolerated, f"{name}: {len(hits)} of {len(lines)} lines, e.g. {hits[:3]}"
    # Most lines read as sentences: they start with a capital (or a quote/digit) and end with a stop.
    sentence_like = sum(1 for line in lines if re.match(r"[\"'(\u201c]?[A-Z0-9]", line) and line[-1] in ".!?:)\"'")
    assert sentence_like / len(lines) > 0.85


def test_a_fresh_interpreter_writes_identical_bytes_without_output_or_imports(corpus, tmp_path):
    directory, paths = corpus
    script = textwrap.dedent(
        """
        import json, sys
        from bert_jax.data import builtin_corpus
        builtin_corpus.write_corpus(sys.argv[1])
        leaked = [m for m in ("antigravity", "this", "idlelib", "tkinter", "turtle", "test", "readline")
                  if m in sys.modules]
        print(json.dumps(leaked))
        """
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout) == [], "modules imported (they run code) or junk printed: " + result.stdout
    for path in paths:
        assert (tmp_path / Path(path).name).read_bytes() == Path(path).read_bytes(), path


def test_max_documents_gives_a_prefix_of_the_full_corpus(corpus, tmp_path):
    _, paths = corpus
    full = read_documents(paths)  # documents dealt round-robin: file i holds documents i, i+4, ...
    shards = [read_documents([p]) for p in paths]
    in_order = [shards[i % len(paths)][i // len(paths)] for i in range(len(full))]

    small = builtin_corpus.write_corpus(str(tmp_path), max_documents=6, num_files=4)
    assert len(small) == 4
    assert builtin_corpus.corpus_stats(small)["documents"] == 6
    small_shards = [read_documents([p]) for p in small]
    assert [small_shards[i % 4][i // 4] for i in range(6)] == in_order[:6]

    # Fewer documents than files: only non-empty files, none left over from the call above.
    fewer = builtin_corpus.write_corpus(str(tmp_path), max_documents=2, num_files=4)
    assert [Path(p).name for p in fewer] == ["python_docs-00000-of-00002.txt", "python_docs-00001-of-00002.txt"]
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == [Path(p).name for p in fewer]
    assert read_documents(fewer) == in_order[:2]


def test_a_complete_corpus_in_the_directory_is_reused(tmp_path):
    first = builtin_corpus.write_corpus(str(tmp_path), max_documents=3, num_files=1)
    stamp = os.stat(first[0]).st_mtime_ns
    Path(first[0]).write_text("edited\n", encoding="utf-8")  # proves the second call did not rewrite it
    assert builtin_corpus.write_corpus(str(tmp_path), max_documents=3, num_files=1) == first
    assert Path(first[0]).read_text(encoding="utf-8") == "edited\n"
    # Other arguments rebuild it.
    rebuilt = builtin_corpus.write_corpus(str(tmp_path), max_documents=4, num_files=1)
    assert builtin_corpus.corpus_stats(rebuilt)["documents"] == 4
    assert os.stat(rebuilt[0]).st_mtime_ns >= stamp


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_documents=0), "max_documents must be >= 1"),
    (dict(num_files=0), "num_files must be >= 1"),
])
def test_bad_arguments_are_reported(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        builtin_corpus.write_corpus(str(tmp_path), **kwargs)


def test_compiled_module_documents_ignore_what_a_host_adds_to_builtins(monkeypatch):
    """Jupyter puts `display` into builtins; the corpus must not depend on where it is built."""
    before = list(builtin_corpus._extension_module_groups())

    def display(*objects):
        """Display a rich representation of the objects in the notebook's output area."""

    display.__module__ = "IPython.core.display_functions"
    monkeypatch.setattr(builtins, "display", display, raising=False)
    after = list(builtin_corpus._extension_module_groups())
    assert after == before
    paragraphs = [p for group in before for document in group for p in document]
    assert "Return the absolute value of the argument." in paragraphs  # builtins.abs


def test_cleaning_turns_a_docstring_with_markup_into_prose():
    docstring = textwrap.dedent(
        """\
        Parse a configuration file.

        Overview
        ========

        Use :func:`read_config` or :meth:`~config.Parser.parse` to read it; see
        :pep:`8` and ``key=value`` lines.  The *section* names are **case**
        insensitive [1]_.

        Example::

            parser = Parser()
            parser.parse("x.ini")

        >>> Parser().parse("")
        {}

        Args:
            path: The file to read, which may be
                relative to the working directory.
            strict: Whether duplicate keys are errors.

        * A bullet item that is long enough to wrap
          onto a second line.
        - Another item, with a hyphenated built-
          in word.

        .. versionadded:: 3.2

           option_line ::= key "=" value
        """
    )
    assert builtin_corpus._paragraphs(docstring) == [
        "Parse a configuration file.",
        "Use read_config or parse to read it; see PEP 8 and key=value lines. The section names are case insensitive.",
        "path: The file to read, which may be relative to the working directory.",
        "strict: Whether duplicate keys are errors.",
        "A bullet item that is long enough to wrap onto a second line.",
        "Another item, with a hyphenated built-in word.",
    ]


def test_short_class_documents_are_merged_into_their_module():
    merge = builtin_corpus._merge_small_documents
    # A short class joins the module; the module, still short, then opens the first long class.
    assert merge(["m1"], [["a1", "a2", "a3"], ["b1"]]) == [["m1", "b1", "a1", "a2", "a3"]]
    # A long module keeps its own document; long classes keep theirs.
    module = ["m1", "m2", "m3"]
    assert merge(module, [["b1"], ["c1", "c2", "c3"]]) == [["m1", "m2", "m3", "b1"], ["c1", "c2", "c3"]]
    # No long class: everything in one document; nothing at all: no document.
    assert merge([], [["a1"], ["b1", "b2"]]) == [["a1", "b1", "b2"]]
    assert merge([], [[], []]) == []
