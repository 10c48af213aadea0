"""Parsing files to text: every format, detection by content and by name, bad and huge input."""

from __future__ import annotations

import json

import pytest

from m2a.data.parse import ParseError, ParseLimits, detect, parse


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def make_pdf(pages: list[list[str]]) -> bytes:
    """A valid PDF (Helvetica text, one line per string) with a correct cross-reference table."""
    objects: list[bytes] = []
    n = len(pages)
    font = 3 + 2 * n  # object number of the font
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    for i, lines in enumerate(pages):
        content = "BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(f"{_pdf_string(s)} Tj T*" for s in lines) + " ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {4 + 2 * i} 0 R >>".encode()
        )
        body = content.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(body) + body + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for num, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % num + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


# -- text and Markdown --------------------------------------------------------------------------


def test_plain_text_line_ends_and_bom() -> None:
    p = parse("\ufeffLine one\r\nLine two\rLine three\n".encode(), "notes.txt")
    assert p.format == "text"
    assert p.text == "Line one\nLine two\nLine three\n"


def test_text_in_windows_1252_is_decoded() -> None:
    p = parse("Café crème à 5 €".encode("cp1252"), "menu.txt")
    assert p.text == "Café crème à 5 €"


def test_utf16_with_bom() -> None:
    p = parse("Grüße aus Köln".encode("utf-16"), None)
    assert p.text == "Grüße aus Köln"


def test_markdown_by_extension_and_mime() -> None:
    md = b"# Returns\n\nItems can be returned within **30 days**.\n"
    assert parse(md, "policy.md").format == "markdown"
    assert parse(md, None, "text/markdown; charset=utf-8").format == "markdown"
    assert "30 days" in parse(md, "policy.md").text


# -- HTML ---------------------------------------------------------------------------------------


HTML = b"""<!DOCTYPE html><html><head><title>Leave policy</title>
<style>body { color: red }</style><script>var secret = "do-not-index";</script></head>
<body><h1>Annual leave</h1><p>Employees get <b>25 days</b> &amp; public holidays.</p>
<ul><li>Carry over: 5 days</li><li>Approval by your manager</li></ul>
<table><tr><th>Grade</th><th>Days</th></tr><tr><td>A</td><td>25</td></tr></table>
<noscript>enable JS</noscript><pre>code  line 1
  indented</pre></body></html>"""


def test_html_visible_text_without_script_and_style() -> None:
    p = parse(HTML, None)  # detected by its doctype
    assert p.format == "html"
    lines = p.text.split("\n")
    assert "Leave policy" in lines  # the title
    assert "Annual leave" in lines  # the heading, on its own line
    assert "Employees get 25 days & public holidays." in lines
    assert "Carry over: 5 days" in lines and "Approval by your manager" in lines
    assert "Grade | Days" in lines and "A | 25" in lines
    assert "  indented" in lines  # <pre> keeps its spaces
    assert "secret" not in p.text and "color" not in p.text and "enable JS" not in p.text


def test_html_by_extension_without_doctype() -> None:
    p = parse(b"<div>Hello <i>there</i></div>", "page.htm")
    assert p.format == "html" and p.text == "Hello there"


# -- PDF ----------------------------------------------------------------------------------------


def test_pdf_pages_and_offsets() -> None:
    data = make_pdf([["Invoice INV-2024-001", "Total due: 120 EUR"], ["Page two: payment terms (30 days)"]])
    p = parse(data, None)  # detected by its %PDF- header
    assert p.format == "pdf"
    assert p.pages is not None and len(p.pages) == 2
    assert "Invoice INV-2024-001" in p.text and "Total due: 120 EUR" in p.text
    assert p.text[p.pages[1] :].startswith("Page two: payment terms (30 days)")
    assert p.text[: p.pages[1]].rstrip().endswith("120 EUR")


def test_corrupt_pdf_is_a_parse_error_without_its_content() -> None:
    with pytest.raises(ParseError, match="corrupt or unreadable PDF") as err:
        parse(b"%PDF-1.7\n1 0 obj << /Secret (hunter2-password) >> garbage garbage", "x.pdf")
    assert "hunter2" not in str(err.value)


def test_truncated_pdf_fails_or_keeps_only_what_is_there() -> None:
    data = make_pdf([["First page text"], ["Second page text"]])
    try:
        p = parse(data[: len(data) // 2], "cut.pdf")
    except ParseError as exc:
        assert "PDF" in str(exc)
    else:  # pypdf may repair it: then only real text comes out
        assert "Second page text" not in p.text


def test_pdf_name_without_pdf_content() -> None:
    with pytest.raises(ParseError, match="does not start with a PDF header"):
        parse(b"just some text", "report.pdf")


def test_pdf_over_the_page_limit() -> None:
    data = make_pdf([[f"page {i}"] for i in range(5)])
    with pytest.raises(ParseError, match="5 pages, the limit is 3"):
        parse(data, "big.pdf", limits=ParseLimits(max_pages=3))


def test_pdf_without_text_layer() -> None:
    with pytest.raises(ParseError, match="no text could be extracted from this PDF"):
        parse(make_pdf([[]]), "scan.pdf")


def test_encrypted_pdf() -> None:
    pypdf = pytest.importorskip("pypdf")
    import io

    writer = pypdf.PdfWriter()
    writer.append(pypdf.PdfReader(io.BytesIO(make_pdf([["classified"]]))))
    writer.encrypt(user_password="pw", owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    with pytest.raises(ParseError, match="encrypted"):
        parse(buf.getvalue(), "locked.pdf")


# -- JSON ---------------------------------------------------------------------------------------


def test_json_flattened_to_key_paths() -> None:
    doc = {
        "order": {"id": "SO-1009", "lines": [{"sku": "XK-4471-B", "qty": 2}, {"sku": "ZZ-1", "qty": 1.5}]},
        "paid": True,
        "note": None,
        "tags": [],
        "text": "two\nlines",
    }
    p = parse(json.dumps(doc).encode(), "order.json")
    assert p.format == "json"
    assert p.text.split("\n") == [
        "order.id: SO-1009",
        "order.lines[0].sku: XK-4471-B",
        "order.lines[0].qty: 2",
        "order.lines[1].sku: ZZ-1",
        "order.lines[1].qty: 1.5",
        "paid: true",
        "note: null",
        "tags: []",
        "text: two lines",
    ]


def test_json_sniffed_without_a_name() -> None:
    assert parse(b'[{"a": 1}]', None).text == "[0].a: 1"
    assert detect(b'  {"a": 1}  ') == "json"


def test_text_that_only_looks_like_json() -> None:
    p = parse(b"[draft] meeting notes [final]", None)
    assert p.format == "text" and p.text == "[draft] meeting notes [final]"


def test_invalid_json_with_a_json_name() -> None:
    with pytest.raises(ParseError, match=r"invalid JSON \(line 2\)") as err:
        parse(b'{"api_key": "sk-live-123",\n oops}', "conf.json")
    assert "sk-live" not in str(err.value)


def test_json_too_deep() -> None:
    deep = b"[" * 100 + b"]" * 100
    with pytest.raises(ParseError, match="nested deeper than 64"):
        parse(deep, "deep.json")


def test_json_expansion_is_bounded_while_flattening() -> None:
    # 200 kB of JSON whose key paths would make it ~10x longer as text.
    doc = {"k" * 100: {"v" * 100: list(range(20000))}}
    with pytest.raises(ParseError, match="longer than the limit of 100000 characters"):
        parse(json.dumps(doc).encode(), "wide.json", limits=ParseLimits(max_chars=100_000))


# -- CSV ----------------------------------------------------------------------------------------


def test_csv_rows_keyed_by_header() -> None:
    data = b"sku,name,price\nXK-4471-B,Hex bolt M8,0.12\nZZ-1,,4.50\n\n"
    p = parse(data, "parts.csv")
    assert p.format == "csv"
    assert p.text.split("\n") == [
        "sku: XK-4471-B | name: Hex bolt M8 | price: 0.12",
        "sku: ZZ-1 | price: 4.50",
    ]


def test_csv_delimiter_is_sniffed_and_tsv_by_name() -> None:
    semi = parse(b"name;city\nAda;London\nLinus;Helsinki\n", None, "text/csv")
    assert semi.text.split("\n") == ["name: Ada | city: London", "name: Linus | city: Helsinki"]
    tsv = parse(b"a\tb\n1\t2,3\n", "x.tsv")
    assert tsv.text == "a: 1 | b: 2,3"


def test_csv_row_longer_than_header() -> None:
    p = parse(b'a,b\n1,2,"quoted, extra"\n', "x.csv")
    assert p.text == "a: 1 | b: 2 | column_3: quoted, extra"


# -- empty, unsupported, huge -------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"   \n\t  \r\n"])
def test_empty_file(data: bytes) -> None:
    with pytest.raises(ParseError, match="the file is empty"):
        parse(data, "empty.txt")


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "PNG image"),
        (b"PK\x03\x04" + b"\x00" * 32, "zip archive"),
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 32, "executable"),
        (bytes(range(256)) * 4, "binary content"),
    ],
)
def test_unsupported_binary(data: bytes, what: str) -> None:
    with pytest.raises(ParseError, match=f"unsupported file type: .*{what}"):
        parse(data, "upload.txt")


def test_huge_file_rejected_before_parsing() -> None:
    data = b"a" * 2_000_001
    with pytest.raises(ParseError, match="too large: 2000001 bytes, the limit is 2000000"):
        parse(data, "big.txt", limits=ParseLimits(max_bytes=2_000_000))


def test_huge_text_over_the_char_limit() -> None:
    with pytest.raises(ParseError, match="longer than the limit of 1000 characters"):
        parse(b"word " * 1000, "long.txt", limits=ParseLimits(max_chars=1000))


def test_huge_html_stops_early() -> None:
    data = b"<html><body>" + b"<p>paragraph of text</p>" * 50_000 + b"</body></html>"
    with pytest.raises(ParseError, match="longer than the limit of 5000 characters"):
        parse(data, "big.html", limits=ParseLimits(max_chars=5000))
