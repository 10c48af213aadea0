"""Normalisation tricks, one test each, and the map from normalised / decoded spans to the original."""

from __future__ import annotations

import base64
import re

from m2a.guardrails import Budget, build, check
from m2a.guardrails.normalize import deleet, leet_pattern, normalize, prepare

ZW = "\u200b"


def found(text: str, pattern: str) -> list[str]:
    """What ``pattern`` matches in every view, as the original characters it maps back to."""
    out = []
    for view in prepare(text).views:
        for m in re.finditer(pattern, view.text):
            s, e = view.span(m.start(), m.end())
            out.append(text[s:e])
    return out


def test_ascii_is_identity_and_cheap() -> None:
    norm, smap = normalize("plain ascii text")
    assert norm == "plain ascii text" and smap is None


def test_zero_width_and_format_characters_removed() -> None:
    text = f"AK{ZW}IA\u2060QW\ufeffER\u00adTY\u200dUI\u200cOP\u202eAS\u2066DF"
    norm, _ = normalize(text)
    assert norm == "AKIAQWERTYUIOPASDF"
    assert found(text, "AKIA[A-Z]+") == [text]  # the span covers the padding inside


def test_variation_selectors_and_tag_characters_removed() -> None:
    tags = "".join(chr(0xE0000 + ord(c)) for c in "hidden")
    text = f"pa\ufe0fss{tags}word\U000e0101"
    assert normalize(text)[0] == "password"


def test_fullwidth_email_maps_back_to_the_fullwidth_characters() -> None:
    text = "write to ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ today"
    assert normalize(text)[0] == "write to john@example.com today"
    assert found(text, r"john@example\.com") == ["ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ"]


def test_homoglyphs_cyrillic_and_greek() -> None:
    text = "раураl ΑΡΙ kеу"  # Cyrillic р а у а, Greek Α Ρ Ι, Cyrillic е у
    assert normalize(text)[0] == "paypal API key"
    assert found(text, "paypal") == ["раураl"]


def test_diacritics_and_combining_marks_folded() -> None:
    text = "pàsswörd and j\u0301ohn"
    assert normalize(text)[0] == "password and john"
    assert found(text, "john") == ["j\u0301ohn"]


def test_nfkc_expansion_maps_each_piece_to_its_source() -> None:
    text = "ﬁle № ①"  # ligature fi, numero sign, circled one
    norm, smap = normalize(text)
    assert norm == "file No 1"
    assert smap is not None
    assert text[slice(*smap.span(0, 1))] == "ﬁ" and text[slice(*smap.span(1, 4))] == "ﬁle"


def test_base64_run_decoded_and_span_maps_into_the_encoded_run() -> None:
    secret = b"contact: eve@evil.org please"
    enc = base64.b64encode(secret).decode()
    text = f"decode this {enc} now"
    views = prepare(text).views
    assert [v.encoding for v in views] == [None, "base64"]
    assert views[1].text == secret.decode()
    got = found(text, r"eve@evil\.org")
    assert len(got) == 1 and got[0] in enc and base64.b64decode(enc).find(b"eve@") >= 0


def test_urlsafe_unpadded_and_nested_base64() -> None:
    inner = base64.urlsafe_b64encode(b"the password is hunter2!").decode().rstrip("=")
    outer = base64.b64encode(inner.encode()).decode()
    views = prepare(f"x {outer} y").views
    assert views[-1].text == "the password is hunter2!" and len(views) == 3


def test_hex_runs_decoded() -> None:
    for enc in ("6d792070696e2069732031323334", "0x6d792070696e2069732031323334",
                "\\x6d\\x79\\x20\\x70\\x69\\x6e\\x20\\x69\\x73\\x20\\x31\\x32"):  # fmt: skip
        views = prepare(f"data {enc} end").views
        assert views[-1].encoding == "hex" and views[-1].text.startswith("my pin is"), enc
    text = "hex 6d792070696e2069732031323334 end"
    assert found(text, "pin") == ["70696e"]  # two hex digits per byte, exactly


def test_binary_runs_are_not_views() -> None:
    sha = "9fceb02d0ae598e95dc970b74767f19372d61af8"
    png = base64.b64encode(bytes(range(256)) * 4).decode()
    text = f"commit {sha} image data:image/png;base64,{png} uuid 123e4567-e89b-12d3-a456-426614174000"
    assert len(prepare(text).views) == 1


def test_data_url_of_an_image_is_not_decoded_even_if_printable() -> None:
    enc = base64.b64encode(b"this would decode to text but it is an image").decode()
    assert len(prepare(f"data:image/png;base64,{enc}").views) == 1
    assert len(prepare(f"data:text/plain;base64,{enc}").views) == 2


def test_decode_budget_reports_truncation() -> None:
    enc = base64.b64encode(b"a long printable text " * 200).decode()
    prep = prepare(enc, max_decoded=100)
    assert prep.truncated and len(prep.views[1].text) <= 100
    assert not prepare(enc).truncated


def test_leetspeak() -> None:
    assert deleet("h4ck3r p@$$w0rd 7o0l") == "hacker password tool"
    rx = re.compile(leet_pattern("kill list"), re.I)
    for s in ("kill list", "k1ll l1st", "KI11   LI5T", "k!ll l!$7"):
        assert rx.fullmatch(s), s
    assert not rx.fullmatch("kills list")


def test_detectors_see_through_the_tricks_with_original_spans() -> None:
    dets = [build("pii"), build("secrets"), build("denylist", {"terms": ["forbidden topic"]})]
    key = "AKIA" + "Q3EGRT5VDSW7XKMB"
    padded = ZW.join(key)
    email = "ｅｖｅ＠ｅｖｉｌ．ｏｒｇ"
    b64 = base64.b64encode(b"my card is 4539 1488 0343 6467").decode()
    text = f"{padded} | {email} | f0rb1dden t0p1c | {b64}"
    r = check(dets, text)
    spans = {f.kind: text[f.start : f.end] for f in r.findings}
    assert spans["aws_access_key_id"] == padded
    assert spans["email"] == email
    assert spans["denylist"] == "f0rb1dden t0p1c"
    card = [f for f in r.findings if f.kind == "card"]
    assert card and card[0].encoding == "base64" and text[card[0].start : card[0].end] in b64


def test_decoded_findings_respect_the_call_budget() -> None:
    enc = base64.b64encode(b"mail bob@corp.com " * 50).decode()
    r = check([build("pii")], enc, Budget(max_decoded=40))
    assert r.over_budget == ["pii"] and r.findings  # the first one was decoded and found
