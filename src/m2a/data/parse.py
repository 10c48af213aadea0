"""Parsing an uploaded file's bytes into plain text: the first step of ingestion.

``parse(data, filename=..., mime=...)`` picks the format from the content (``%PDF-`` magic, archive
and image signatures, whether the bytes decode as text) and then from the filename's extension and
the MIME type, and returns a ``Parsed``: the extracted text (``\\n`` line ends), the format's name,
and for a PDF the character offset where each page starts. Formats:

- ``text`` and ``markdown``: the text as is (Markdown's markup is readable and kept);
- ``html``: the visible text (stdlib ``html.parser``); ``script``, ``style``, ``template`` and
  ``noscript`` dropped, headings and the title kept, block elements on their own lines;
- ``pdf``: each page's text layer with ``pypdf`` (optional: ``pip install 'm2a[data]'``);
- ``json``: one ``key.path[0].leaf: value`` line per leaf value;
- ``csv`` (and ``.tsv``): one line per row, ``header: value | header: value``.

Every failure is a ``ParseError`` whose message is short, says what went wrong, and never quotes
the file's content (it becomes the file's ``last_error``). Work is bounded by ``ParseLimits``: the
input's size, a PDF's page count and the extracted text's length (checked while extracting, so a
file that would expand past the limit stops early), and JSON's nesting depth.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Any

FORMATS = ("text", "markdown", "html", "pdf", "json", "csv")


class ParseError(ValueError):
    """The file cannot be turned into text; the message is safe to show and to store."""


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Bounds on one file's parsing."""

    max_bytes: int = 64 * 1024 * 1024  # the input
    max_pages: int = 2000  # a PDF's pages
    max_chars: int = 8_000_000  # the extracted text
    max_depth: int = 64  # JSON nesting


@dataclass(frozen=True, slots=True)
class Parsed:
    text: str
    format: str  # one of FORMATS
    pages: tuple[int, ...] | None = None  # PDF: character offset in ``text`` where each page starts


_EXT = {
    ".txt": "text",
    ".text": "text",
    ".log": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
}
_MIME = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/json": "json",
    "text/json": "json",
    "text/csv": "csv",
    "text/tab-separated-values": "csv",
}
# Binary formats recognised by their first bytes, to say what was sent instead of "binary content".
_SIGNATURES = (
    (b"PK\x03\x04", "a zip archive (for example .docx, .xlsx or .pptx)"),
    (b"\xd0\xcf\x11\xe0", "an OLE document (for example .doc or .xls)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf", "a 7z archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "an executable"),
)


class _NotJson(ParseError):
    pass


class _Budget:
    """Collects text pieces and fails as soon as they exceed ``max_chars``."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.size = 0

    def add(self, piece: str) -> None:
        self.size += len(piece)
        if self.size > self.max_chars:
            raise ParseError(f"the extracted text is longer than the limit of {self.max_chars} characters")
        self.parts.append(piece)

    def text(self) -> str:
        return "".join(self.parts)


def detect(data: bytes, filename: str | None = None, mime: str | None = None) -> str:
    """The format of ``data`` (one of ``FORMATS``), or ``ParseError`` for what cannot be parsed."""
    return _detect(data, filename, mime)[0]


def _detect(data: bytes, filename: str | None, mime: str | None) -> tuple[str, bool]:
    """The format and whether the name or MIME type said so (else it was sniffed from the content)."""
    head = data[:8192]
    if head.lstrip()[:5] == b"%PDF-":
        return "pdf", False
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            raise ParseError(f"unsupported file type: {what}")
    hinted = _hint(filename, mime)
    if hinted == "pdf":
        raise ParseError("corrupt PDF: the file does not start with a PDF header")
    if _looks_binary(head):
        raise ParseError("unsupported file type: binary content that is not a supported format")
    if hinted:
        return hinted, True
    text = head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n").lower()
    if text.startswith(("<!doctype html", "<html")):
        return "html", False
    if text[:1] in ("{", "[") and data.rstrip()[-1:] in (b"}", b"]"):
        return "json", False  # parse falls back to text if it is not JSON after all
    return "text", False


def parse(
    data: bytes, filename: str | None = None, mime: str | None = None, limits: ParseLimits | None = None
) -> Parsed:
    """The text of a file's bytes (see the module's docstring); ``ParseError`` when it cannot."""
    lim = limits or ParseLimits()
    if len(data) > lim.max_bytes:
        raise ParseError(f"the file is too large: {len(data)} bytes, the limit is {lim.max_bytes}")
    if not data.strip():
        raise ParseError("the file is empty")
    fmt, hinted = _detect(data, filename, mime)
    pages = None
    if fmt == "pdf":
        text, pages = _pdf(data, lim)
    else:
        raw = _decode(data)
        if fmt == "html":
            text = _html(raw, lim)
        elif fmt == "json":
            try:
                text = _json(raw, lim)
            except _NotJson:
                if hinted:
                    raise
                fmt, text = "text", _plain(raw)  # it only looked like JSON
        elif fmt == "csv":
            delimiter = "\t" if (filename or "").lower().endswith(".tsv") else None
            text = _csv(raw, lim, delimiter)
        else:
            text = _plain(raw)
    if len(text) > lim.max_chars:
        raise ParseError(f"the extracted text is longer than the limit of {lim.max_chars} characters")
    if not text.strip():
        raise ParseError(f"no text could be extracted from this {fmt.upper()} file")
    return Parsed(text=text, format=fmt, pages=pages)


def _hint(filename: str | None, mime: str | None) -> str | None:
    if filename:
        fmt = _EXT.get(PurePosixPath(filename.replace("\\", "/")).suffix.lower())
        if fmt:
            return fmt
    if mime:
        return _MIME.get(mime.split(";", 1)[0].strip().lower())
    return None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _looks_binary(head: bytes) -> bool:
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return False  # a text byte-order mark (UTF-16 has NUL bytes)
    if b"\x00" in head:
        return True
    sample = head.decode("latin-1")
    return len(_CONTROL.findall(sample)) > max(1, len(sample) // 20)


def _decode(data: bytes) -> str:
    """Text from bytes: UTF-8 (with or without a BOM), UTF-16 with a BOM, else Windows-1252."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ParseError("the file is not valid UTF-16 text") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _plain(raw: str) -> str:
    return raw.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


# -- HTML ---------------------------------------------------------------------------------------

_SKIP = {"script", "style", "template", "noscript", "svg", "iframe", "object"}
_BLOCK = {
    "p", "div", "br", "hr", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "thead", "tbody",
    "section", "article", "header", "footer", "nav", "aside", "main", "blockquote", "pre", "figure",
    "figcaption", "form", "fieldset", "address", "details", "summary", "title", "caption",
    "h1", "h2", "h3", "h4", "h5", "h6",
}  # fmt: skip
_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"}
_CELL = {"td", "th"}


class _TextOfHtml(HTMLParser):
    def __init__(self, budget: _Budget) -> None:
        super().__init__(convert_charrefs=True)
        self.budget = budget
        self.skip = 0  # depth inside elements whose text is dropped
        self.pre = 0
        self.line: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            if tag not in _VOID:
                self.skip += 1
            return
        if tag in _BLOCK:
            self._flush(keep_space=self.pre > 0)
        elif tag in _CELL and self.line:
            self.line.append(" | ")
        if tag == "pre":
            self.pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "pre" and self.pre:
            self._flush(keep_space=True)
            self.pre -= 1
        elif tag in _BLOCK:
            self._flush(keep_space=self.pre > 0)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            lines = data.split("\n")
            for i, piece in enumerate(lines):
                if i:
                    self._flush(keep_space=True)
                self.line.append(piece)
        else:
            self.line.append(data)

    def _flush(self, keep_space: bool = False) -> None:
        text = "".join(self.line)
        self.line = []
        text = text.rstrip() if keep_space else " ".join(text.split())
        if text.strip():
            self.budget.add(text + "\n")


def _html(raw: str, lim: ParseLimits) -> str:
    budget = _Budget(lim.max_chars)
    parser = _TextOfHtml(budget)
    try:
        parser.feed(_plain(raw))
        parser.close()
        parser._flush()
    except ParseError:
        raise
    except Exception as exc:  # html.parser is lenient; anything else is a malformed document
        raise ParseError("malformed HTML document") from exc
    return budget.text().rstrip("\n")


# -- PDF ----------------------------------------------------------------------------------------


def _pdf(data: bytes, lim: ParseLimits) -> tuple[str, tuple[int, ...]]:
    try:
        import pypdf
    except ImportError as exc:
        raise ParseError("PDF files need the pypdf package: pip install 'm2a[data]'") from exc
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it warns about every repaired xref
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("the PDF is encrypted with a password")
        n = len(reader.pages)
    except ParseError:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files
        raise ParseError("corrupt or unreadable PDF") from exc
    if n > lim.max_pages:
        raise ParseError(f"the PDF has {n} pages, the limit is {lim.max_pages}")
    budget = _Budget(lim.max_chars)
    starts: list[int] = []
    for i in range(n):
        try:
            page = _plain(reader.pages[i].extract_text() or "").strip()
        except ParseError:
            raise
        except Exception as exc:
            raise ParseError(f"corrupt or unreadable PDF: page {i + 1} cannot be read") from exc
        if i:
            budget.add("\n\n")
        starts.append(budget.size)
        budget.add(page)
    return budget.text(), tuple(starts)


# -- JSON ---------------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return " ".join(value.split()) if "\n" in value or "\r" in value else value
    return json.dumps(value)


def _json(raw: str, lim: ParseLimits) -> str:
    try:
        doc = json.loads(raw)
    except RecursionError as exc:
        raise ParseError(f"the JSON document is nested deeper than {lim.max_depth} levels") from exc
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise _NotJson(f"invalid JSON{where}") from exc
    budget = _Budget(lim.max_chars)
    # Depth-first, in document order, without recursion: (path, value, depth).
    stack: list[tuple[str, Any, int]] = [("", doc, 0)]
    while stack:
        path, value, depth = stack.pop()
        if depth > lim.max_depth:
            raise ParseError(f"the JSON document is nested deeper than {lim.max_depth} levels")
        if isinstance(value, dict) and value:
            items = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
        elif isinstance(value, list) and value:
            items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        else:
            if isinstance(value, dict | list):
                leaf = "{}" if isinstance(value, dict) else "[]"
            else:
                leaf = _scalar(value)
            budget.add(f"{path}: {leaf}\n" if path else f"{leaf}\n")
            continue
        stack.extend((p, v, depth + 1) for p, v in reversed(items))
    return budget.text().rstrip("\n")


# -- CSV ----------------------------------------------------------------------------------------


def _csv(raw: str, lim: ParseLimits, delimiter: str | None) -> str:
    text = _plain(raw)
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    budget = _Budget(lim.max_chars)
    try:
        rows = csv.reader(io.StringIO(text), delimiter=delimiter)
        header: list[str] | None = None
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [h.strip() or f"column_{i + 1}" for i, h in enumerate(row)]
                continue
            cells = []
            for i, cell in enumerate(row):
                value = " ".join(cell.split())
                if value:
                    name = header[i] if i < len(header) else f"column_{i + 1}"
                    cells.append(f"{name}: {value}")
            if cells:
                budget.add(" | ".join(cells) + "\n")
    except csv.Error as exc:
        raise ParseError(f"malformed CSV: {exc}") from exc
    if header is not None and not budget.parts:
        budget.add(" | ".join(header))  # a header without rows still says what the file holds
    return budget.text().rstrip("\n")
