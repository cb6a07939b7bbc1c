"""A pretraining corpus that every Python installation already has: CPython's own documentation.

`python -m bert_jax pretrain` with no data argument trains on this, so the first run needs no download.
Two sources, both shipped with the interpreter:

* the language reference topics behind `help('if')` (`pydoc_data.topics.topics`): one document per topic;
* the docstrings of the standard library: one document per module (its docstring and those of its
  functions) and one per class (its docstring and those of its methods); a class of fewer than three
  sentences joins its module's document, and a module that short opens its first class's. Pure-Python
  modules are read with `ast` from their source files and never imported, so nothing in them runs
  (`antigravity` would open a browser, `this` prints, `idlelib`/`tkinter` want a display). Compiled
  modules (`builtins`, `math`, `itertools`, ...) have no source and are imported; those are C modules
  whose import does nothing visible, minus the test/demo ones and `readline`, which can write escape
  codes to the terminal.

The walk is sorted and uses no clocks or hash order, so on a given Python version the corpus is the same
byte for byte on every run and host. Markup is cleaned so the text reads as prose: doctest sessions,
`::` literal blocks, grammar productions, tables, signatures and other code-like paragraphs are dropped
(a paragraph must read as words and end like a sentence); reST roles (:func:`x` -> x), inline literals,
emphasis, directives, headings and footnote marks are stripped; wrapped lines are joined. Paragraphs
repeated verbatim (say `io` and `_pyio`) are kept once.

Size on CPython 3.11.7 (`python -m bert_jax.data.builtin_corpus /tmp/corpus` prints it): 1,254 documents,
21,182 sentences, 278,332 words, 1.72 MB in 4 files, of which the language reference is 68 documents and
42k words. That is what CPython's own prose amounts to once the code is removed; other 3.x versions
differ by some percent. Building it takes 7-10 s on one CPU core, mostly `ast.parse`; `max_documents`
stops the walk early.

Every host of a multi-host run can build its own copy in a local directory: the files are identical.

Output is the original BERT pretraining text format: one sentence per line, a blank line between
documents, spread over a few UTF-8 .txt files (documents dealt round-robin, so the files are of similar
size and a multi-host input pipeline can give each host its own files).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import json
import os
import re
import sys
import sysconfig
import warnings
from typing import Iterable, Iterator, Optional

from bert_jax.data.text_reader import split_sentences

FORMAT_VERSION = 2  # bump when the cleaning changes, so cached corpora are rebuilt
_MANIFEST = "builtin_corpus.json"

# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def write_corpus(directory: str, max_documents: Optional[int] = None, num_files: int = 4) -> list[str]:
    """Writes the corpus into `directory` (created if needed) and returns the paths of the .txt files.

    Files: `python_docs-0000N-of-0000M.txt`, one sentence per line, a blank line between documents.
    `max_documents` keeps the first N documents of the deterministic order (language reference topics
    first), for quick runs. If `directory` already holds a complete corpus built with the same
    arguments on the same Python version, it is reused (so a resumed run does not rebuild it).
    """
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"write_corpus: max_documents must be >= 1 or None, got {max_documents}")
    if num_files < 1:
        raise ValueError(f"write_corpus: num_files must be >= 1, got {num_files}")
    os.makedirs(directory, exist_ok=True)
    key = {
        "format_version": FORMAT_VERSION,
        "python": sys.version,
        "max_documents": max_documents,
        "num_files": num_files,
    }
    cached = _read_manifest(directory, key)
    if cached is not None:
        return cached
    buckets: list[list[list[str]]] = [[] for _ in range(num_files)]
    for index, document in enumerate(iter_documents(max_documents)):
        buckets[index % num_files].append(document)
    buckets = [bucket for bucket in buckets if bucket]
    paths = []
    for shard, documents in enumerate(buckets):
        path = os.path.join(directory, f"python_docs-{shard:05d}-of-{len(buckets):05d}.txt")
        text = "\n\n".join("\n".join(sentences) for sentences in documents) + "\n"
        _write_atomically(path, text)
        paths.append(path)
    # Files of an earlier call with other arguments would be picked up by a glob over the directory.
    # (Removed only now, so that hosts writing the same corpus into a shared directory never race.)
    for name in os.listdir(directory):
        stale = os.path.join(directory, name)
        if re.fullmatch(r"python_docs-\d{5}-of-\d{5}\.txt", name) and stale not in paths:
            os.remove(stale)
    # The manifest goes last: a crash mid-way leaves none, so the next call rebuilds.
    _write_atomically(
        os.path.join(directory, _MANIFEST), json.dumps({**key, "files": [os.path.basename(p) for p in paths]})
    )
    return paths


def _write_atomically(path: str, text: str) -> None:
    """Write-then-rename, so hosts sharing a directory (NFS) never read a half-written file."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(temporary, path)


def corpus_stats(paths: Iterable[str]) -> dict:
    """Counts documents, sentences (non-blank lines) and whitespace-separated words in corpus files."""
    documents = sentences = words = 0
    for path in paths:
        in_document = False
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    sentences += 1
                    words += len(line.split())
                    if not in_document:
                        documents += 1
                        in_document = True
                else:
                    in_document = False
    return {"documents": documents, "sentences": sentences, "words": words}


def iter_documents(max_documents: Optional[int] = None) -> Iterator[list[str]]:
    """Yields documents as lists of sentences, in a fixed order: topics, compiled modules, source modules."""
    seen: set[str] = set()  # cleaned paragraphs already emitted, to keep verbatim repeats once
    count = 0
    for group in _document_groups():
        module, *classes = (_document_sentences(paragraphs, seen) for paragraphs in group)
        for sentences in _merge_small_documents(module, classes):
            yield sentences
            count += 1
            if max_documents is not None and count >= max_documents:
                return


def _merge_small_documents(module: list[str], classes: list[list[str]]) -> list[list[str]]:
    """A module's document and its classes' documents, with the short ones merged.

    A class with fewer than _MIN_SENTENCES sentences (after de-duplication) joins the module's document;
    a module document still that short opens its first class's document instead. So few documents are
    a lone sentence, which could only ever be paired with a random next sentence.
    """
    big = []
    for sentences in classes:
        if len(sentences) >= _MIN_SENTENCES:
            big.append(sentences)
        else:
            module = module + sentences
    if big and len(module) < _MIN_SENTENCES:
        big[0], module = module + big[0], []
    return [d for d in (module, *big) if d]


# ----------------------------------------------------------------------------------------------------
# Sources: docstrings and topic pages, each document yielded as a list of cleaned paragraphs
# ----------------------------------------------------------------------------------------------------

# Class documents shorter than this (in sentences) go into their module's document.
_MIN_SENTENCES = 3

# Source-tree folders that hold tests, demos, vendored wheels or build files rather than documentation.
_SKIPPED_DIRS = {
    "test", "tests", "idle_test", "idlelib", "turtledemo", "site-packages", "dist-packages",
    "__pycache__", "lib-dynload", "ensurepip", "pydoc_data", "encodings", "__phello__",
}
_SKIPPED_FILES = {"__hello__.py", "antigravity.py", "this.py"}

# Compiled modules not imported: test/demo extension modules, and readline (may emit terminal codes).
_SKIPPED_EXTENSION = re.compile(r"^(_test.*|_ctypes_test|_xx.*|xx.*|readline|_tkinter|__.*)$")


def _document_groups() -> Iterator[list[list[str]]]:
    """Groups of documents as lists of cleaned paragraphs: [topic], or [module, class, class, ...]."""
    for topic in _topic_documents():
        yield [topic]
    yield from _extension_module_groups()
    yield from _source_module_groups()


def _topic_documents() -> Iterator[list[str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; the docstrings still make a corpus
        return
    for name in sorted(topics):
        yield _paragraphs(topics[name])


def _source_module_groups() -> Iterator[list[list[str]]]:
    """Module and class documents from the docstrings of the standard library's .py files (never run)."""
    for path in _stdlib_source_files():
        try:
            with open(path, "rb") as f:
                source = f.read()
            with warnings.catch_warnings():  # invalid escape sequences in old code warn on stderr
                warnings.simplefilter("ignore")
                tree = ast.parse(source, filename=path)
        except (OSError, SyntaxError, ValueError):
            continue  # e.g. lib2to3's Python 2 fixtures; they are not documentation
        module_texts = [ast.get_docstring(tree) or ""]
        class_documents = []
        for node in _definitions(tree.body):
            if isinstance(node, ast.ClassDef):
                texts = [ast.get_docstring(node) or ""]
                texts += [ast.get_docstring(n) or "" for n in _definitions(node.body)]
                class_documents.append(texts)
            else:
                module_texts.append(ast.get_docstring(node) or "")
        yield _module_group(module_texts, class_documents)


def _stdlib_source_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for directory, subdirectories, filenames in os.walk(root):
        subdirectories[:] = [
            d for d in subdirectories if d not in _SKIPPED_DIRS and not d.startswith("config-")
        ]
        for filename in filenames:
            if filename.endswith(".py") and filename not in _SKIPPED_FILES and not filename.startswith(
                "_sysconfigdata"
            ):
                files.append(os.path.join(directory, filename))
    # Sort by path relative to the stdlib root, so two installations in different places agree.
    return sorted(files, key=lambda p: os.path.relpath(p, root).split(os.sep))


def _definitions(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Functions and classes defined in a statement list, including under `if`/`try` at that level."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node
        elif isinstance(node, ast.If):
            yield from _definitions(node.body)
            yield from _definitions(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _definitions(node.body)
            for handler in node.handlers:
                yield from _definitions(handler.body)
            yield from _definitions(node.orelse)
            yield from _definitions(node.finalbody)


def _extension_module_groups() -> Iterator[list[list[str]]]:
    """Module and class documents from compiled modules (builtins, math, ...), which have no source."""
    names = set(sys.builtin_module_names)
    dynload = os.path.join(sysconfig.get_paths()["stdlib"], "lib-dynload")
    if os.path.isdir(dynload):
        for filename in os.listdir(dynload):
            if filename.endswith((".so", ".pyd")):
                names.add(filename.split(".")[0])
    for name in sorted(names):
        if _SKIPPED_EXTENSION.match(name):
            continue
        module = _quiet_import(name)
        if module is None:
            continue
        # Only what the compiled module itself defines: under Jupyter, `builtins` also holds IPython's
        # `display` and `sys.excepthook` is IPython's, which would make the corpus depend on the host.
        # (`_collections.deque` says it comes from `collections`, hence the underscore-less name too.)
        own = {name, name.lstrip("_")}
        module_texts = [_own_doc(module)]
        class_documents = []
        for _, value in sorted(vars(module).items()):
            if getattr(value, "__module__", None) not in own:
                continue
            if inspect.isclass(value):
                texts = [_own_doc(value)]
                texts += [_own_doc(member) for _, member in sorted(vars(value).items()) if callable(member)]
                class_documents.append(texts)
            elif inspect.isbuiltin(value):
                module_texts.append(_own_doc(value))
        yield _module_group(module_texts, class_documents)


def _quiet_import(name: str):
    """Imports a compiled module with stdout/stderr captured; None if it cannot be imported here."""
    if name in sys.modules:
        return sys.modules[name]
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a missing system library (e.g. no libcurses) just means no docs
        return None


def _own_doc(obj) -> str:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _module_group(module_texts: list[str], class_documents: list[list[str]]) -> list[list[str]]:
    """[module document, class document, ...], each the cleaned paragraphs of its docstrings."""
    return [[p for text in texts for p in _paragraphs(text)] for texts in [module_texts, *class_documents]]


# ----------------------------------------------------------------------------------------------------
# Cleaning: docstring / rendered-reST text -> prose paragraphs -> sentences
# ----------------------------------------------------------------------------------------------------


_DANGLING_LABEL = re.compile(r"^\S+( \S+)?:$")


def _document_sentences(paragraphs: list[str], seen: set[str]) -> list[str]:
    sentences = []
    for paragraph in paragraphs:
        if paragraph in seen:
            continue
        seen.add(paragraph)
        # A lone "Examples:" or "Arguments:" introduced code or a list that was dropped.
        sentences.extend(s for s in split_sentences(paragraph) if not _DANGLING_LABEL.match(s))
    return sentences


_UNDERLINE = re.compile(r"^([=\-~*^#+_\"'`:.])\1{2,}\s*$")  # heading under/overlines
_TABLE_RULE = re.compile(r"^[+|=\-\s]{3,}$")  # +----+----+ and ==== ==== table borders
_DIRECTIVE = re.compile(r"^\.\.\s+(?:[\w:-]+::|_|\[|\|)")  # .. note::, .. _target:, .. [1], .. |sub|
_COMMENT = re.compile(r"^\.\.(\s|$)")
_RUBRIC = re.compile(r"^-\[ .* \]-$")  # Sphinx's text rendering of a rubric: "-[ Footnotes ]-"
_CODE_DIRECTIVE = re.compile(
    r"^\.\.\s+(code-block|code|sourcecode|doctest|testcode|testoutput|productionlist|math|highlight|"
    r"literalinclude|raw|csv-table|list-table|table|toctree|autosummary|image|figure)::"
)
_BULLET = re.compile(r"^([*\-+\u2022]|\d{1,2}[.)]|\(\d{1,2}\)|\(?[a-z][.)]|#\.|\[(?:\d{1,2}|#\w*|\*)\])\s+")
_PROMPT = re.compile(r"^(>>>|\.\.\.(\s|$)|\$ |% )")


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a docstring or plain-text rendered reST page, markup removed, one line each."""
    lines = _drop_code_lines(text.expandtabs(8).splitlines())
    paragraphs = []
    for segment in _segments(lines):
        if _COLUMNS.search(segment):
            continue
        paragraph = _clean_inline(segment)
        if _looks_like_prose(paragraph):
            paragraphs.append(paragraph)
    return paragraphs


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _drop_code_lines(lines: list[str]) -> list[str]:
    """Removes doctest sessions, literal blocks after `::`, code directives, headings and table rules.

    Dropped lines become blank, so what was around them stays in separate paragraphs.
    """
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = _indent(line)
        if _PROMPT.match(stripped):
            # A session: prompts and their output, up to a blank line or a dedent.
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= indent:
                i += 1
            out.append("")
            continue
        if _CODE_DIRECTIVE.match(stripped) or stripped.endswith("::"):
            # Literal block: everything indented deeper than this line (blank lines included).
            if not _CODE_DIRECTIVE.match(stripped):
                kept = re.sub(r"\s*::$", ":" if not stripped.endswith(" ::") else "", line.rstrip())
                out.append(kept if kept.strip() not in ("", ":") else "")
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
                i += 1
            out.append("")
            continue
        if _UNDERLINE.match(stripped) or _TABLE_RULE.match(stripped):
            # A heading's underline: drop the title line above it too (a title is not a sentence).
            title = out[-1].strip() if out else ""
            if title and _UNDERLINE.match(stripped) and len(stripped) >= len(title) - 1:
                out[-1] = ""
            out.append("")
            i += 1
            continue
        if _DIRECTIVE.match(stripped) or _COMMENT.match(stripped) or _RUBRIC.match(stripped):
            out.append("")  # the directive line itself; an admonition's indented body is kept as text
            i += 1
            continue
        out.append(line)
        i += 1
    return out


def _segments(lines: list[str]) -> Iterator[str]:
    """Groups lines into segments: blank lines, bullet items and indentation changes separate them.

    A bullet's continuation lines are those indented deeper than its marker; elsewhere an indentation
    change starts a new segment (a definition's body, an argument list, a code sample), which is then
    judged on its own by `_looks_like_prose`.
    """
    current: list[str] = []
    current_indent = 0
    in_bullet = False
    hanging = False  # the segment has lines indented deeper than its first
    for line in lines + [""]:
        stripped = line.strip()
        indent = _indent(line)
        bullet = _BULLET.match(stripped)
        if not current or not stripped or bullet:
            continues = False
        elif in_bullet:
            continues = indent >= current_indent  # lazy continuation lines at the marker's column too
        elif indent > current_indent:
            # A hanging indent ("wait: If True then shutdown ... / futures have finished ..."), but not
            # the indented block under a line ending in ':' ("Args:" and its entries).
            continues = not current[-1].endswith(":")
            hanging = hanging or continues
        else:
            # Back at the first line's column after a hanging indent: the next entry of a list.
            continues = indent == current_indent and not hanging
        if continues:
            current.append(stripped)
            continue
        if current:
            yield _join_lines(current)
        current = []
        hanging = False
        if stripped:
            current_indent = indent
            in_bullet = bool(bullet)
            current.append(stripped[bullet.end():] if bullet else stripped)


def _join_lines(lines: list[str]) -> str:
    text = lines[0]
    for line in lines[1:]:
        # Sphinx's text writer wraps after a hyphen of a hyphenated word ("built-" / "in"): keep it glued.
        if text[-1:] == "-" and text[-2:-1].isalpha() and line[:1].islower():
            text += line
        else:
            text += " " + line
    return text


_ROLE = re.compile(r":(?:[\w-]+:)*[\w-]+:`(~?)([^`]*?)`")  # :func:`x`, :py:meth:`~a.b`, :pep:`8`
_TITLED_TARGET = re.compile(r"^(.*?)\s*<[^<>]*>$")  # `text <target>`


def _role(match: re.Match) -> str:
    tilde, content = match.groups()
    titled = _TITLED_TARGET.match(content)
    if titled and titled.group(1):
        return titled.group(1)
    content = content.lstrip("!")
    if tilde:
        content = content.split(".")[-1]
    role = match.group(0).split("`")[0]
    if role in (":pep:", ":rfc:"):
        return f"{role[1:-1].upper()} {content}"
    return content


# (pattern, replacement) applied in order after the roles.
_INLINE_MARKUP = [
    (re.compile(r"``(.+?)``"), r"\1"),  # inline literal
    (re.compile(r"`([^`'\s]+)'"), r"'\1'"),  # old-style `quote'
    (re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?"), r"\1"),  # hyperlink `text <url>`_
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),  # default role, reference
    (re.compile(r"\*\*(\S(?:.*?\S)?)\*\*"), r"\1"),  # strong
    (re.compile(r"(?<![\w*])\*(?=[^\s*])([^*]*?[^\s*])\*(?![\w*])"), r"\1"),  # emphasis, not *args
    (re.compile(r"\s*\[(?:\d{1,2}|#\w*|\*)\]_?"), ""),  # footnote marks [1], [#]
    (re.compile(r"\s+"), " "),
]


def _clean_inline(text: str) -> str:
    text = _ROLE.sub(_role, text)
    for pattern, replacement in _INLINE_MARKUP:
        text = pattern.sub(replacement, text)
    return text.strip()


_WORD = re.compile(r"^[(\"'\u201c\u2018]*[A-Za-z][A-Za-z'\u2019-]*[)\"'\u201d\u2019.,;:!?]*$")
_ENDS_LIKE_SENTENCE = re.compile(r"[.!?:][\"')\u201d\u2019]*$")
# Code that survived as a paragraph: a grammar production, a prompt, a definition, an assignment
# statement, a trailing comment.
_CODE = re.compile(r"::=|>>>|\bdef \w+\(|^[\w.\[\]']+ \S?= | # ")
# Runs of spaces inside a line, other than the two after a sentence end that the text writer keeps:
# aligned columns of a table or of commented code. Checked before the whitespace is collapsed.
_COLUMNS = re.compile(r"[^.!?:\s\"'\u201d] {2,}\S")
_MIN_WORDS = 4
_MIN_WORD_FRACTION = 0.6
_MIN_WORD_FRACTION_UNTERMINATED = 0.9


def _looks_like_prose(paragraph: str) -> bool:
    """Mostly plain words and a sentence ending: rejects code, signatures, grammar, tables, headings."""
    tokens = paragraph.split()
    if len(tokens) < _MIN_WORDS or _CODE.search(paragraph):
        return False
    words = sum(1 for t in tokens if _WORD.match(t))
    if _ENDS_LIKE_SENTENCE.search(paragraph):
        return words >= _MIN_WORD_FRACTION * len(tokens)
    # Many one-line docstrings omit the final period ("Return whether process is a daemon"); accept
    # those only when they are almost all plain words and start like a sentence.
    return (
        len(tokens) >= _MIN_WORDS + 1
        and paragraph[0].isupper()
        and paragraph[-1].isalnum()
        and words >= _MIN_WORD_FRACTION_UNTERMINATED * len(tokens)
    )


# ----------------------------------------------------------------------------------------------------
# Manifest: reuse a complete corpus already in the directory
# ----------------------------------------------------------------------------------------------------


def _read_manifest(directory: str, key: dict) -> Optional[list[str]]:
    try:
        with open(os.path.join(directory, _MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if {k: manifest.get(k) for k in key} != key:
        return None
    paths = [os.path.join(directory, name) for name in manifest.get("files", [])]
    if not paths or not all(os.path.isfile(p) for p in paths):
        return None
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bert_jax.data.builtin_corpus OUTPUT_DIR", file=sys.stderr)
        return 2
    paths = write_corpus(argv[1])
    stats = corpus_stats(paths)
    size = sum(os.path.getsize(p) for p in paths)
    print(f"{len(paths)} files, {size / 1e6:.2f} MB, {stats}")
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
