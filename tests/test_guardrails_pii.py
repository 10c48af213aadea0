"""The pii detector: each kind found where it is and not where it only looks alike."""

from __future__ import annotations

import pytest

from m2a.guardrails import Context, build, check
from m2a.guardrails.checksums import cn_id_ok, dni_ok, iban_ok, luhn, ssn_ok
from m2a.guardrails.normalize import prepare

PII = build("pii")


def kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in PII.check(Context(), prepare(text))]


POSITIVE = [
    ("email", "write to jane.doe+news@mail.example.co.uk please", "jane.doe+news@mail.example.co.uk"),
    ("email", "<a.b_c@sub-domain.example.org>", "a.b_c@sub-domain.example.org"),
    ("phone", "call +1 415 555 2671 now", "+1 415 555 2671"),
    ("phone", "office +44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
    ("phone", "mobile +49-151-2345-6789", "+49-151-2345-6789"),
    ("phone", "reach me at (212) 555-0143.", "(212) 555-0143"),
    ("phone", "cell 646.555.0199", "646.555.0199"),
    ("phone", "tél 01 42 68 53 00", "01 42 68 53 00"),
    ("phone", "ring 020 7946 0958 tomorrow", "020 7946 0958"),
    ("phone", "phone: 4155552671", "4155552671"),
    ("card", "card 4539 1488 0343 6467 exp 04/27", "4539 1488 0343 6467"),
    ("card", "amex 3714-496353-98431", "3714-496353-98431"),
    ("card", "pay with 5555555555554444", "5555555555554444"),
    ("iban", "IBAN DE89 3704 0044 0532 0130 00.", "DE89 3704 0044 0532 0130 00"),
    ("iban", "to GB82WEST12345698765432 ref", "GB82WEST12345698765432"),
    ("iban", "fr7630006000011234567890189", "fr7630006000011234567890189"),
    ("national_id", "SSN 212-45-6789", "212-45-6789"),
    ("national_id", "my ssn is 212456789", "212456789"),
    ("national_id", "DNI 12345678Z", "12345678Z"),
    ("national_id", "NIE X1234567L", "X1234567L"),
    ("national_id", "身份证 11010519491231002X", "11010519491231002X"),
    ("national_id", "SIN 130 692 544", "130 692 544"),
    ("ip", "from 81.2.69.160 at noon", "81.2.69.160"),
    ("ip", "host 10.0.12.7.", "10.0.12.7"),
    ("ip", "v6 2001:db8:85a3::8a2e:370:7334 ok", "2001:db8:85a3::8a2e:370:7334"),
    ("ip", "mapped ::ffff:192.0.2.128", "::ffff:192.0.2.128"),
]


@pytest.mark.parametrize(("kind", "text", "value"), POSITIVE)
def test_found(kind: str, text: str, value: str) -> None:
    assert (kind, value) in kinds(text)


NEGATIVE = [
    "order #4155552671 shipped",  # order number
    "invoice 555-123-4567",
    "released on 2024-01-15 and 15.01.2024 and 01/15/2024",  # dates
    "version 1.2.3.4 and v10.0.3.1",  # versions
    "id 123e4567-e89b-12d3-a456-426614174000",  # UUID
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "SKU 800-555-1234",
    "test card 4539 1488 0343 6468",  # fails Luhn
    "0000 0000 0000 0000",  # passes Luhn, not a card
    "git@github.com:org/repo.git",  # ssh remote
    "icon@2x.png and logo@3x.webp",
    "user@localhost",
    "DE89 3704 0044 0532 0130 01",  # bad IBAN checksum
    "SSN 666-12-3456 or 912-34-5678 or 123-00-4567",  # never issued
    "DNI 12345678A",  # wrong letter
    "listen on 127.0.0.1 or 0.0.0.0, mask 255.255.255.0",
    "999.1.1.1 is not an address",
    "time 12:30:45 and MAC 00:1a:2b:3c:4d:5e",
    "std::vector<int> and a::b",
    "ticket 123-45-6789",
    "part number 0800 123 4567",
    "https://user@example.com/path and postgres://app:Pw-2x9Lq@db.example.com/x",  # URL user, not e-mail
    "upgrade 1.2.3.4 to 1.2.4.0, see section 4.2.1.3",  # one-digit quads: versions
]


@pytest.mark.parametrize("text", NEGATIVE)
def test_not_found(text: str) -> None:
    assert kinds(text) == []


def test_checksums() -> None:
    assert luhn("4539148803436467") and not luhn("4539148803436468")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert not iban_ok("XX89370400440532013000")
    assert ssn_ok("212", "45", "6789") and not ssn_ok("000", "45", "6789") and not ssn_ok("078", "05", "1120")
    assert dni_ok("12345678Z") and dni_ok("X1234567L") and not dni_ok("12345678A")
    assert cn_id_ok("11010519491231002X") and not cn_id_ok("110105194912310021")


def test_kinds_parameter_and_unknown_kind() -> None:
    only = build("pii", {"kinds": ["email"]})
    got = only.check(Context(), prepare("a@example.com +1 415 555 2671"))
    assert [f.kind for f in got] == ["email"]
    with pytest.raises(ValueError, match="unknown pii kinds"):
        build("pii", {"kinds": ["names"]})


def test_findings_are_described_without_values() -> None:
    text = "jane@example.com 4539 1488 0343 6467 DE89 3704 0044 0532 0130 00"
    for f in check([PII], text).findings:
        assert text[f.start : f.end] not in f.description
        assert 0 <= f.score <= 1 and f.detector == "pii" and f.category == "pii"
