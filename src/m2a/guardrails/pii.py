"""The ``pii`` detector: e-mail addresses, phone numbers, payment cards, IBANs, national identity
numbers and IP addresses, by pattern *and* validation, in every view of the text.

Each kind is a candidate pattern (anchored at a boundary, bounded repetition: linear time) and a
check that throws out look-alikes:

- ``email``: local part, ``@``, a dotted domain with an alphabetic TLD; not ``git@host:path``,
  ``icon@2x.png``-style file names, nor the user part of a URL (``https://user:pass@host``);
- ``phone``: ``+CC`` international numbers (8 to 15 digits), North American ``(NXX) NXX-XXXX`` forms
  (area code and exchange rules), national numbers starting with 0 in groups (9 to 12 digits), and
  bare 10–11 digit runs only after a word like "phone" or "call"; never after "order", "invoice",
  "ticket", "sku", "part", "serial", "version" (order numbers, product codes), and never a date;
- ``card``: 13–19 digits, optionally grouped by spaces or dashes, a known issuer prefix, Luhn;
- ``iban``: the country's length and the mod-97 check;
- ``national_id``: US SSN (``123-45-6789`` outside the never-issued ranges, or 9 digits after
  "SSN"), Spanish DNI / NIE (check letter), Chinese resident ID (date and mod 11-2), Canadian SIN
  (Luhn, after "SIN" or "social insurance");
- ``ip``: IPv4 with valid octets (not loopback, unspecified, broadcast, netmask, all four octets of
  one digit — versions, section numbers, public resolvers — nor after "version"/"v"), IPv6 as the
  ``ipaddress`` module parses it (not ``::1``).

Parameters: ``kinds`` (a subset of the above; default all).
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterator

from m2a.guardrails import checksums as ck
from m2a.guardrails.base import PII, Context, Finding, disjoint, register_detector
from m2a.guardrails.normalize import Prepared

Hit = tuple[int, int, str, float, str]  # start, end, kind, score, description

KINDS = ("email", "phone", "card", "iban", "national_id", "ip")
LABELS = {"email": "EMAIL", "phone": "PHONE", "card": "CARD", "iban": "IBAN", "national_id": "NATIONAL_ID",
          "ip": "IP"}  # fmt: skip

_FILLER = r"(?:\W{1,4}(?:is|was|number|no|num|nr|me|at|on|:))*\W{0,4}$"  # "phone number is: "
_NOT_PHONE = re.compile(
    r"(?i)\b(?:order|invoice|ticket|case|ref|reference|tracking|sku|part|serial|model|item|isbn|build|"
    r"version|ver|release|po|batch|lot|ean|upc|account|acct|confirmation|booking|receipt)\b"
    r"(?:\s{0,2}(?:number|num|nr|no|id|code)\b)?[\s#:.-]{0,4}$"
)
_PHONE_WORD = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|fax|whatsapp|sms|text|reach|ring|contact|"
    r"téléphone|telefon|handy|portable)\b" + _FILLER
)


def _before(text: str, pos: int, rx: re.Pattern[str], width: int = 28) -> bool:
    return rx.search(text, max(0, pos - width), pos) is not None


# --- e-mail ----------------------------------------------------------------------------------------

_LOCAL = frozenset(string.ascii_letters + string.digits + "._%+-")
_DOMAIN = re.compile(
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}([A-Za-z]{2,24}))(?![\w-]|\.[A-Za-z0-9])"
)
_FILE_TLDS = {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "css", "js", "ts", "map", "json",
              "html", "txt", "pdf", "woff", "ttf"}  # fmt: skip


_URL_AUTHORITY = re.compile(r"://[^\s/@]{0,256}$")  # ``https://user:pass@host``: not an address


def _emails(t: str) -> Iterator[Hit]:
    """From each ``@``: the local part to its left (at most 64 characters), the domain to its right."""
    at = t.find("@")
    while at != -1:
        i = at
        while i > 0 and at - i <= 64 and t[i - 1] in _LOCAL:
            i -= 1
        while i < at and not t[i].isalnum():
            i += 1
        m = _DOMAIN.match(t, at + 1) if i < at and at - i <= 64 and not (i and t[i - 1].isalnum()) else None
        if (m and m.group(2).lower() not in _FILE_TLDS and not t.startswith(":", m.end())
                and not _URL_AUTHORITY.search(t, max(0, i - 260), i)):  # fmt: skip
            yield i, m.end(), "email", 0.95, "e-mail address"
        at = t.find("@", at + 1)


# --- phone -----------------------------------------------------------------------------------------

_PHONE_INTL = re.compile(r"(?<![\w+])\+[1-9](?:[ .\-()]{0,2}\d){6,16}(?!\w|[.-]\d)")
_PHONE_NANP = re.compile(
    r"(?<![\w.+-])(?<!\d[ ])(?:1[ .-]?)?(?:\((\d{3})\)[ ]?|(\d{3})([ .-]))(\d{3})([ .-])(\d{4})"
    r"(?![\w-]|[.]\d|[ ]\d)"
)
_PHONE_NATIONAL = re.compile(
    r"(?<![\w.+-])(?<!\d[ ])0[1-9]\d{0,3}(?:([ .\-/])\d{2,8}){1,4}(?![\w-]|[.:/ ]\d)"
)
_PHONE_BARE = re.compile(r"(?<![\w.+-])\d{10,11}(?![\w-]|[.]\d)")
_DATE = re.compile(r"\d{1,4}([./-])\d{1,2}\1\d{1,4}")


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def _phones(t: str, lo: int, hi: int) -> Iterator[Hit]:
    for m in _PHONE_INTL.finditer(t, lo, hi):
        if 8 <= len(_digits(m.group())) <= 15 and not _before(t, m.start(), _NOT_PHONE):
            yield m.start(), m.end(), "phone", 0.9, "phone number (international)"
    for m in _PHONE_NANP.finditer(t, lo, hi):
        area = m.group(1) or m.group(2)
        if m.group(3) and m.group(3) != m.group(5):
            continue  # 555-123.4567: mixed separators, not a written phone number
        if area[0] in "01" or area[1:] == "11" or m.group(4)[0] in "01" or _before(t, m.start(), _NOT_PHONE):
            continue
        yield m.start(), m.end(), "phone", 0.85, "phone number (North American)"
    for m in _PHONE_NATIONAL.finditer(t, lo, hi):
        s = m.group()
        seps = {c for c in s if not c.isdigit()}
        if not 9 <= len(_digits(s)) <= 12 or len(seps - {"/"}) > 1 or _DATE.fullmatch(s):
            continue
        if _before(t, m.start(), _NOT_PHONE):
            continue
        yield m.start(), m.end(), "phone", 0.75, "phone number (national)"
    for m in _PHONE_BARE.finditer(t, lo, hi):
        if _before(t, m.start(), _PHONE_WORD) and not _before(t, m.start(), _NOT_PHONE, 40):
            yield m.start(), m.end(), "phone", 0.7, "phone number"


# --- payment cards ---------------------------------------------------------------------------------

_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-]|[ ]\d)")
_CARD_GROUPS = {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 1), (4, 4, 4, 2), (4, 4, 4, 3),
                (4, 4, 5), (4, 4, 4, 4, 2), (4, 4, 4, 4, 1), (6, 13), (4, 4, 4, 7)}  # fmt: skip


def _issuer(d: str) -> str | None:
    n2, n3, n4, n6 = int(d[:2]), int(d[:3]), int(d[:4]), int(d[:6])
    if d[0] == "4" and len(d) in (13, 16, 19):
        return "Visa"
    if (51 <= n2 <= 55 or 2221 <= n4 <= 2720) and len(d) == 16:
        return "Mastercard"
    if n2 in (34, 37) and len(d) == 15:
        return "American Express"
    if (n4 == 6011 or n2 == 65 or 644 <= n3 <= 649 or 622126 <= n6 <= 622925) and len(d) in (16, 19):
        return "Discover"
    if 3528 <= n4 <= 3589 and 16 <= len(d) <= 19:
        return "JCB"
    if (300 <= n3 <= 305 or n2 in (36, 38, 39) or n4 == 3095) and 14 <= len(d) <= 19:
        return "Diners Club"
    if n2 == 62 and 16 <= len(d) <= 19:
        return "UnionPay"
    if (n2 == 50 or 56 <= n2 <= 69) and 12 <= len(d) <= 19:
        return "Maestro"
    return None


def _cards(t: str, lo: int, hi: int) -> Iterator[Hit]:
    for m in _CARD.finditer(t, lo, hi):
        s = m.group()
        d = _digits(s)
        seps = {c for c in s if not c.isdigit()}
        if len(seps) > 1 or (seps and tuple(len(g) for g in re.split(r"[ -]", s)) not in _CARD_GROUPS):
            continue
        if not 13 <= len(d) <= 19 or len(set(d)) == 1 or not ck.luhn(d):
            continue
        issuer = _issuer(d)
        if issuer is None or _before(t, m.start(), _NOT_PHONE):
            continue
        yield m.start(), m.end(), "card", 0.95, f"payment card number ({issuer})"


# --- IBAN ------------------------------------------------------------------------------------------

def _iban_at(t: str, start: int) -> Iterator[Hit]:
    """An IBAN starting at ``start`` (two letters, two digits, then its country's length of letters
    and digits, spaces allowed between them)."""
    if start and t[start - 1].isascii() and t[start - 1].isalnum():
        return
    head = t[start : start + 4].upper()
    want = ck.IBAN_LENGTHS.get(head[:2])
    if want is None or not head[2:].isdigit():
        return
    chars, i, got = [head], start + 4, 4
    while got < want and i < len(t):
        c = t[i]
        if c.isascii() and c.isalnum():
            chars.append(c.upper())
            got += 1
        elif not (c == " " and i + 1 < len(t) and t[i + 1].isalnum()):
            break
        i += 1
    glued = i < len(t) and t[i].isascii() and t[i].isalnum()  # more letters or digits: not this IBAN
    if got == want and not glued and ck.iban_ok("".join(chars)):
        yield start, i, "iban", 0.95, f"IBAN ({head[:2]})"


# --- national identity numbers ---------------------------------------------------------------------

_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_SSN_BARE = re.compile(r"(?<![\w-])(\d{3})[ ]?(\d{2})[ ]?(\d{4})(?![\w-])")
_SSN_WORD = re.compile(r"(?i)\b(?:ssn|social\s+security|ss#)" + _FILLER)
_DNI = re.compile(r"(?<!\w)(\d{8}|[XYZ]\d{7})[- ]?([A-Z])(?!\w)")
_CN_ID = re.compile(r"(?<!\w)\d{17}[\dXx](?!\w)")
_SIN = re.compile(r"(?<![\d-])([1-79]\d{2})([ -]?)(\d{3})\2(\d{3})(?![\d-])")
_SIN_WORD = re.compile(r"(?i)\b(?:sin|social\s+insurance|nas|num[ée]ro\s+d'assurance\s+sociale)" + _FILLER)


def _national(t: str, lo: int, hi: int) -> Iterator[Hit]:
    for m in _SSN.finditer(t, lo, hi):
        if ck.ssn_ok(*m.groups()) and not _before(t, m.start(), _NOT_PHONE):
            yield m.start(), m.end(), "national_id", 0.85, "US social security number"
    for m in _SSN_BARE.finditer(t, lo, hi):
        if "-" not in m.group() and ck.ssn_ok(*m.groups()) and _before(t, m.start(), _SSN_WORD):
            yield m.start(), m.end(), "national_id", 0.8, "US social security number"
    for m in _DNI.finditer(t, lo, hi):
        if ck.dni_ok(m.group(1) + m.group(2)):
            yield m.start(), m.end(), "national_id", 0.85, "Spanish DNI/NIE"
    for m in _CN_ID.finditer(t, lo, hi):
        if ck.cn_id_ok(m.group()):
            yield m.start(), m.end(), "national_id", 0.9, "Chinese resident identity number"
    for m in _SIN.finditer(t, lo, hi):
        if ck.luhn(m.group(1) + m.group(3) + m.group(4)) and _before(t, m.start(), _SIN_WORD):
            yield m.start(), m.end(), "national_id", 0.8, "Canadian social insurance number"


# --- IP addresses ----------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:]{2,39}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?![\w:]|\.\d)")
_NOT_IP = re.compile(r"(?i)(?:\b(?:version|ver|release|build|firmware|v)\s*:?\s*|\bv)$")


def _ipv4(t: str, lo: int, hi: int) -> Iterator[Hit]:
    for m in _IPV4.finditer(t, lo, hi):
        ip = ipaddress.IPv4Address(m.group())
        if ip.is_loopback or ip.is_unspecified or m.group().startswith("255."):
            continue
        if len(m.group()) == 7:
            continue  # 1.2.4.0, 4.2.1.3: versions and section numbers (and 8.8.4.4: no one's address)
        if _before(t, m.start(), _NOT_IP, 12):
            continue
        yield m.start(), m.end(), "ip", 0.6 if ip.is_private else 0.8, "IPv4 address"


_HEXC = frozenset("0123456789abcdefABCDEF:.")
_HEX_RUN = re.compile(r"[0-9A-Fa-f:.]*")


def _ipv6(t: str) -> Iterator[Hit]:
    """From each colon: the run of hex digits, colons and dots around it, parsed once."""
    i = t.find(":")
    while i != -1:
        s = i
        while s > 0 and i - s < 39 and t[s - 1] in _HEXC:
            s -= 1
        m = _IPV6.match(t, s)
        run_end = _HEX_RUN.match(t, i).end()
        if m and m.group().count(":") >= 2 and any(c.isdigit() for c in m.group()):
            try:
                ip6 = ipaddress.IPv6Address(m.group())
            except ValueError:
                ip6 = None
            if ip6 is not None and not (ip6.is_loopback or ip6.is_unspecified):
                yield m.start(), m.end(), "ip", 0.8, "IPv6 address"
        i = t.find(":", max(i + 1, run_end))


_NUMBER = re.compile(r"\d[\d .()/-]*")


def _numbers(t: str, kinds: frozenset[str]) -> Iterator[Hit]:
    """The kinds made of digits, each pattern run only around runs of digits and separators that
    could hold one (five digits or more; an IBAN's two check digits after two letters)."""
    n = len(t)
    for m in _NUMBER.finditer(t):
        ws, we = m.span()
        if "iban" in kinds and ws >= 2 and t[ws - 2 : ws].isascii() and t[ws - 2 : ws].isalpha():
            yield from _iban_at(t, ws - 2)
        if we - ws < 5 or sum(c.isdigit() for c in m.group()) < 5:
            continue
        lo, hi = max(0, ws - 2), min(n, we + 3)
        if "phone" in kinds:
            yield from _phones(t, lo, hi)
        if "card" in kinds:
            yield from _cards(t, lo, hi)
        if "national_id" in kinds:
            yield from _national(t, lo, hi)
        if "ip" in kinds:
            yield from _ipv4(t, lo, hi)


def best(hits: list[Hit]) -> list[Hit]:
    """Overlapping hits resolved: the highest score wins, then the longest."""
    return [h for _, _, _, h in disjoint((h[0], h[1], h[3], h) for h in hits)]


@register_detector("pii")
class PIIDetector:
    name = "pii"

    def __init__(self, kinds: list[str] | None = None) -> None:
        unknown = set(kinds or ()) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown pii kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        self.kinds = frozenset(kinds or KINDS)

    def scan(self, t: str) -> list[Hit]:
        hits: list[Hit] = []
        if "email" in self.kinds and "@" in t:
            hits.extend(_emails(t))
        if "ip" in self.kinds and ":" in t:
            hits.extend(_ipv6(t))
        if self.kinds - {"email"}:
            hits.extend(_numbers(t, self.kinds))
        return best(hits)

    def check(self, ctx: Context, text: Prepared) -> list[Finding]:
        out: list[Finding] = []
        for view in text.views:
            hits = self.scan(view.text)
            for s, e, kind, score, desc in hits:
                o0, o1 = view.span(s, e)
                out.append(Finding(PII, kind, self.name, score, o0, o1, desc, LABELS[kind], view.encoding))
        return out
