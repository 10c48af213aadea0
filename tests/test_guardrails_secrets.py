"""The secrets detector: each row of its table, placeholders and code that only look like keys."""

from __future__ import annotations

import base64
import json
import random
import string

import pytest

from m2a.guardrails import Context, build
from m2a.guardrails.checksums import entropy, looks_sequential
from m2a.guardrails.normalize import prepare

SECRETS = build("secrets")
RNG = random.Random(7)
ALNUM = string.ascii_letters + string.digits


def rand(n: int, alphabet: str = ALNUM) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


def found(text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in SECRETS.check(Context(), prepare(text))]


def _jwt() -> str:
    def seg(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"sub": "1234", "name": "x", "iat": 1700000000}
    return f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg(claims)}.{rand(43)}"


PEM_BODY = "\n".join(rand(64, ALNUM + "+/") for _ in range(6))
CASES = [
    ("aws_access_key_id", "AKIA" + rand(16, string.ascii_uppercase + "234567")),
    ("aws_secret_access_key", None),  # built below: needs its name next to it
    ("github_token", "ghp_" + rand(36)),
    ("github_token", "github_pat_" + rand(22) + "_" + rand(59)),
    ("gitlab_token", "glpat-" + rand(20, ALNUM + "-_")),
    ("slack_token", f"xoxb-{rand(11, string.digits)}-{rand(12, string.digits)}-{rand(24)}"),
    ("slack_webhook", f"https://hooks.slack.com/services/T{rand(8, string.ascii_uppercase)}/B{rand(10, string.ascii_uppercase)}/{rand(24)}"),  # noqa: E501
    ("stripe_key", "sk_live_" + rand(24)),
    ("google_api_key", "AIza" + rand(35, ALNUM + "_-")),
    ("openai_key", "sk-proj-" + rand(48, ALNUM + "_-")),
    ("openai_key", "sk-" + rand(48)),
    ("huggingface_token", "hf_" + rand(34, string.ascii_letters)),
    ("npm_token", "npm_" + rand(36)),
    ("sendgrid_key", f"SG.{rand(22)}.{rand(43)}"),
    ("jwt", _jwt()),
    ("private_key", f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"),
    ("private_key", f"-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}"),  # cut short
]


@pytest.mark.parametrize(("kind", "value"), [c for c in CASES if c[1]])
def test_found_with_exact_span(kind: str, value: str) -> None:
    assert (kind, value) in found(f"here: {value} (do not share)")


def test_aws_secret_key_needs_its_name() -> None:
    key = rand(40, ALNUM + "/+")
    assert ("aws_secret_access_key", key) in found(f'aws_secret_access_key = "{key}"')
    assert ("aws_secret_access_key", key) in found(f"AWS Secret Key: {key}")
    assert found(f"checksum {key}") == []


def test_password_in_url_masks_the_password_only() -> None:
    text = "DATABASE_URL=postgresql://app:Zq8-vN2pLx4@db.internal:5432/prod"
    assert found(text) == [("url_password", "Zq8-vN2pLx4")]
    assert found("redis://:r3d1sP4ssW0rd9@cache:6379/0") == [("url_password", "r3d1sP4ssW0rd9")]


def test_passwords_on_command_lines() -> None:
    assert found("curl -u admin:Pa55w0rd-2024 https://api.example.com") == [("cli_password", "Pa55w0rd-2024")]
    for pw in ("Zq8vN2pLx4kR2m", "TbdvQiwOMSaCELRI"):
        assert found(f"docker login registry.example.com -u ci -p {pw}") == [("cli_password", pw)]
    for text in ("docker run -p 5432:5432 postgres", "pytest -p no:cacheprovider", "curl -u $USER:$PASS https://x",
                 "docker login -u bob --password-stdin"):  # fmt: skip
        assert found(text) == [], text


def test_assignments_with_high_entropy_values() -> None:
    v = rand(24)
    for text in (f"api_key = '{v}'", f'"password": "{v}"', f"export DB_PASSWORD={v}", f"client_secret: {v}",
                 f"API_TOKEN => {v}"):  # fmt: skip
        assert ("password_assignment", v) in found(text), text
    assert ("password_assignment", "Summer2024!x") in found("password = 'Summer2024!x'")
    assert ("password_assignment", "Gx7!pQ2m") in found("my password is: Gx7!pQ2m")
    django = ")BtJGq&7k-lppexhVo-7TxDRLvN(71S9k3)O8t6mz1qkeS!qMS"
    assert ("password_assignment", django) in found(f"SECRET_KEY = '{django}'")  # quoted: parentheses kept
    assert ("password_assignment", v) in found(f'<add key="ApiKey" value="{v}" />')
    assert found("the password is incorrect, and my password was secure") == []


NEGATIVE = [
    "AKIAIOSFODNN7EXAMPLE",  # the documentation example
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ghp_" + "x" * 36,
    "ghp_1234567890abcdefghijklmnopqrstuvwxyz",  # sequential placeholder
    "ghp_" + rand(35),  # one character short
    "AKIA0000111122223333",  # digits 0, 1 are not in the key alphabet
    "sk-your-api-key-here",
    "password = os.environ['DB_PASSWORD']",
    "password=get_password(user)",
    "api_key = settings.OPENAI_API_KEY",
    "token: ${GITHUB_TOKEN}",
    "password: '********'",
    "secret_key = 'changeme'",
    "password = user_password",
    "token_url = 'https://auth.example.com/oauth/token'",
    "postgresql://user:password@localhost/db",
    "redis://:<password>@host:6379",
    "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
    "-----BEGIN PUBLIC KEY-----\n" + PEM_BODY + "\n-----END PUBLIC KEY-----",
    "eyJhbGciOiJIUzI1NiJ9.notajwt.sig",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",  # noqa: E501
    "pk_live_" + rand(24),  # publishable: not a secret
]


@pytest.mark.parametrize("text", NEGATIVE)
def test_not_found(text: str) -> None:
    assert found(text) == []


def test_entropy_and_placeholders() -> None:
    assert entropy("aaaa") == 0 and entropy("abcd") == 2.0
    assert looks_sequential("abcdefghij") and looks_sequential("xxxxxxxxxx")
    assert not looks_sequential(rand(30))


def test_kinds_parameter() -> None:
    only = build("secrets", {"kinds": ["jwt"]})
    assert [f.kind for f in only.check(Context(), prepare(f"{_jwt()} ghp_{rand(36)}"))] == ["jwt"]
    with pytest.raises(ValueError, match="unknown secret kinds"):
        build("secrets", {"kinds": ["passport"]})


def test_label_is_secret_and_description_has_no_value() -> None:
    value = "ghp_" + rand(36)
    (f,) = SECRETS.check(Context(), prepare(value))
    assert f.mask == "[SECRET]" and value not in f.description and f.category == "secret"
