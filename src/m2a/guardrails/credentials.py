"""The ``secrets`` detector: cloud and API keys, tokens, private keys and passwords, from a table of
patterns (one row per kind of credential) and a Shannon-entropy check against placeholders.

Each row: a kind, a pattern whose group ``v`` (or the whole match) is the secret, the least entropy
(bits per character) the secret part must have, and an optional validator. Values that read as
placeholders — ``EXAMPLE``, ``xxxx``, ``your_api_key``, ``<token>``, ``${VAR}``, ``****``, long
runs like ``abcdef`` or ``123456`` — are dropped whatever the pattern says. Rows with a fixed prefix
(``AKIA``, ``ghp_``, ``xoxb-``, ``sk_live_``, ``AIza``…) are specific on their own; the contextual rows
(an AWS secret key next to its name, ``password=`` / ``api_key:`` assignments, ``user:pass@`` in
URLs, ``curl -u user:pass``, ``login -u user -p pass``) need more entropy, and an assignment's value
must not be code (a call, an attribute, a variable reference).

Why not ``detect-secrets``: its value is the same kind of table plus entropy over whole files; a
table written for prompts is as good, has no dependency, and keeps spans exact.

Parameters: ``kinds`` (a subset of ``KINDS``; default all), ``min_entropy_generic`` (3.0 by
default: the bits per character an assignment's value needs).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from m2a.guardrails.base import SECRET, Context, Finding, disjoint, register_detector
from m2a.guardrails.checksums import entropy, looks_sequential
from m2a.guardrails.normalize import Prepared


def _jwt_ok(v: str) -> bool:
    head = v.split(".", 1)[0]
    try:
        obj = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and ("alg" in obj or "typ" in obj)


_CODE_VALUE = re.compile(r"^(?:[\w.]*\(|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$|\$|%\(|\{|<|@|[a-z][\w+.-]*://)")


def _assigned_ok(v: str) -> bool:
    """An assigned value that is a literal, not code: not ``get_pw()``, ``settings.KEY``, ``$VAR``,
    ``user_password`` (an identifier without digits) nor a URL (``url_password`` reads those)."""
    return not _CODE_VALUE.search(v) and not (v.isidentifier() and not any(c.isdigit() for c in v))


def _literal(v: str) -> bool:
    """A command-line value that is not a variable or an expression (``$PASS``, ``$(cat f)``)."""
    return not _CODE_VALUE.search(v)


def _pem_ok(body: str) -> bool:
    """A key's body: enough base64 of a random enough look (not ``...`` nor ``<your key>``)."""
    body = re.sub(r"(?m)^[A-Za-z-]+:.*$|\s", "", body)
    return len(body) >= 40 and entropy(body) > 4.0 and not placeholder(body)


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    min_entropy: float
    description: str
    needles: tuple[str, ...]  # the rule runs only on a text holding one of them (a cheap ``in`` test)
    before: frozenset[str] = frozenset()  # characters that may not stand just before the match
    lower: bool = False  # needles and pattern are for the text lower-cased (ASCII letters only)
    score: float = 0.95
    valid: Callable[[str], bool] | None = None


def _r(kind: str, rx: str, ent: float, desc: str, needles: tuple[str, ...], before: str = "", *,
       lower: bool = False, score: float = 0.95,
       valid: Callable[[str], bool] | None = None) -> Rule:  # fmt: skip
    return Rule(kind, re.compile(rx), ent, desc, needles, frozenset(before), lower, score, valid)


_AN = string.ascii_letters + string.digits
_B = r"(?![A-Za-z0-9_-])"  # the end of a token
_ASSIGN_NAME = (r"(?:password|passwd|passphrase|pwd|pass|secret|client[_-]?secret|secret[_-]?key|api[_-]?key|"
                r"apikey|api[_-]?token|access[_-]?token|auth[_-]?token|refresh[_-]?token|private[_-]?key|"
                r"token|bearer|credentials?)")  # fmt: skip
# ``=``, ``:``, ``=>``, ``:=`` after an optional closing quote, or "is" / "was" in prose ("my password is X")
_ASSIGN_OP = r"(?:[\"']?\s{0,4}(?::=|=>|[:=])|\s{1,3}(?:is|was)\s{0,3}:?)\s{0,4}"
_ASSIGN = re.compile(_ASSIGN_NAME + _ASSIGN_OP)  # on the lower-cased text
_QUOTED = re.compile(r"([\"'`])([^\s\"'`]{6,256})\1")
_BARE = re.compile(r"[^\s\"'`,;()\[\]{}<>]{6,256}")
_ASSIGN_NEEDLES = ("pass", "pwd", "secret", "key", "token", "bearer", "credential")

RULES: tuple[Rule, ...] = (
    _r("aws_access_key_id", r"(?P<v>(?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA)[A-Z2-7]{16})(?![A-Z0-9])", 2.5,
       "AWS access key id", ("AKIA", "ASIA", "ABIA", "ACCA", "AROA", "AIDA"),
       string.ascii_uppercase + string.digits),
    _r("aws_secret_access_key",
       r"aws[\w .-]{0,24}?secret[\w .-]{0,24}?['\"]?\s{0,4}[:=]\s{0,4}['\"]?"
       r"(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
       4.0, "AWS secret access key", ("aws",), lower=True),
    _r("github_token", rf"(?P<v>gh[pousr]_[A-Za-z0-9]{{36,76}}){_B}", 4.0, "GitHub token",
       ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"), _AN + "_"),
    _r("github_token", rf"(?P<v>github_pat_[A-Za-z0-9]{{22}}_[A-Za-z0-9]{{59}}){_B}", 4.0,
       "GitHub fine-grained token", ("github_pat_",), _AN + "_"),
    _r("gitlab_token", rf"(?P<v>gl(?:pat|dt|rt|cbt|ptt|ft|imt|agent)-[A-Za-z0-9_-]{{20,64}}){_B}", 3.5,
       "GitLab token", ("glpat-", "gldt-", "glrt-", "glcbt-", "glptt-", "glft-", "glimt-", "glagent-"),
       _AN + "_"),
    _r("slack_token", rf"(?P<v>xox[abposr]-(?:\d{{6,16}}-){{1,3}}[A-Za-z0-9-]{{10,64}}){_B}", 3.5,
       "Slack token", ("xox",), _AN),
    _r("slack_webhook", r"(?P<v>https://hooks\.slack\.com/services/T[A-Z0-9]{8,12}/B[A-Z0-9]{8,12}/"
       r"[A-Za-z0-9]{24})", 3.5, "Slack webhook URL", ("hooks.slack.com",)),
    _r("stripe_key", rf"(?P<v>[sr]k_(?:live|test)_[A-Za-z0-9]{{24,99}}){_B}", 4.0, "Stripe secret key",
       ("k_live_", "k_test_"), _AN),
    _r("google_api_key", rf"(?P<v>AIza[A-Za-z0-9_-]{{35}}){_B}", 4.0, "Google API key", ("AIza",),
       _AN + "_-"),
    _r("openai_key", rf"(?P<v>sk-(?:proj-|svcacct-|admin-|ant-api\d\d-|ant-)?[A-Za-z0-9_-]{{32,200}}){_B}",
       4.0, "API secret key (sk-)", ("sk-",), _AN + "_-"),
    _r("huggingface_token", rf"(?P<v>hf_[A-Za-z]{{34}}){_B}", 4.0, "Hugging Face token", ("hf_",), _AN + "_"),
    _r("npm_token", rf"(?P<v>npm_[A-Za-z0-9]{{36}}){_B}", 4.0, "npm token", ("npm_",), _AN + "_"),
    _r("pypi_token", rf"(?P<v>pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{{40,240}}){_B}", 4.0, "PyPI token",
       ("pypi-AgEIcHlwaS5vcmc",), _AN + "_-"),
    _r("sendgrid_key", rf"(?P<v>SG\.[A-Za-z0-9_-]{{22}}\.[A-Za-z0-9_-]{{43}}){_B}", 4.0, "SendGrid API key",
       ("SG.",), _AN),
    _r("twilio_key", r"(?P<v>SK[0-9a-f]{32})(?![A-Za-z0-9])", 3.3, "Twilio API key", ("SK",), _AN,
       score=0.85),
    _r("azure_storage_key", r"AccountKey=(?P<v>[A-Za-z0-9+/]{86}==)", 4.5, "Azure storage account key",
       ("AccountKey=",)),
    _r("jwt", rf"(?P<v>eyJ[A-Za-z0-9_-]{{10,2000}}\.eyJ[A-Za-z0-9_-]{{10,8000}}\.[A-Za-z0-9_-]{{0,2000}})"
       rf"{_B}", 4.0, "JSON web token", ("eyJ",), _AN + "_-", score=0.9, valid=_jwt_ok),
    _r("url_password", r"://[^\s:/@'\"<>]{0,128}:(?P<v>[^\s:/@'\"<>]{1,256})@[A-Za-z0-9.\[-]", 1.5,
       "password in a URL", ("://",), score=0.9),
    _r("cli_password", r"(?:^|\s)(?:-u|--user)[ =]?[^\s:'\"]{1,64}:(?P<v>[^\s'\"]{4,256})", 2.0,
       "password in a command line (user:password)", ("-u", "--user"), score=0.85, valid=_literal),
    _r("cli_password", r"(?m)^[^\n]{0,200}?(?:\blogin\b|\s-u\s?\S|--user(?:name)?[ =])[^\n]{0,200}?"
       r"(?:\s-p|\s--password[ =])\s?(?P<v>[^\s'\"]{6,256})", 3.0, "password in a command line",
       (" -p", "--password"), score=0.85, valid=_literal),
    _r("password_assignment", rf"\bkey\s{{0,2}}=\s{{0,2}}[\"']\w{{0,24}}{_ASSIGN_NAME}\w{{0,24}}[\"']"
       r"\s{1,4}value\s{0,2}=\s{0,2}[\"'](?P<v>[^\s\"']{6,256})[\"']", 3.0,
       "credential in a configuration entry", ("value",), lower=True, score=0.8, valid=_assigned_ok),
)  # fmt: skip
_ASSIGNMENT = Rule("password_assignment", _ASSIGN, 3.0, "credential in an assignment", _ASSIGN_NEEDLES,
                   lower=True, score=0.8, valid=_assigned_ok)  # fmt: skip
KINDS = (*dict.fromkeys(r.kind for r in RULES), "private_key")
_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # keeps every offset

_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ ){0,3})PRIVATE KEY(?: BLOCK)?-----")
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=\s]{64,16384}")
_PEM_WINDOW = 16_384


def pem_blocks(text: str) -> list[tuple[int, int, bool]]:
    """Private key blocks: (start, end, whole) — whole when the END line was found; else the header
    and the base64 lines after it (a block cut short). Linear: the next END line is looked up once
    for all the headers before it."""
    out: list[tuple[int, int, bool]] = []
    next_end = -2
    pos = 0
    for m in _PEM_BEGIN.finditer(text):
        if m.start() < pos:
            continue
        if next_end != -1 and next_end < m.end():
            next_end = text.find("-----END ", m.end())
        footer = f"-----END {m.group(1)}PRIVATE KEY"
        if next_end != -1 and next_end - m.end() <= _PEM_WINDOW and text.startswith(footer, next_end):
            close = text.find("-----", next_end + len(footer))
            end = close + 5 if close != -1 and close - next_end < 64 else next_end + len(footer)
            if _pem_ok(text[m.end() : next_end]):
                out.append((m.start(), end, True))
                pos = end
            continue
        body = _PEM_BODY.match(text, m.end())
        if body and _pem_ok(body.group()):
            end = m.end() + len(body.group().rstrip())
            out.append((m.start(), end, False))
            pos = end
    return out

_PLACEHOLDER = re.compile(
    r"(?i)example|sample|dummy|placeholder|redacted|changeme|change_me|your[_-]|<|>|\*{3}|x{5}|\.{3}|"
    r"\$\{|\{\{|%s|replace|insert|fake|test(?:ing)?[_-]?(?:key|token|secret|password)|^(?:pass(?:word)?|secret"
    r"|token|none|null|true|false|undefined)$"
)


_PEM_WHOLE = Rule("private_key", _PEM_BEGIN, 0.0, "private key (PEM)", ("PRIVATE KEY",), score=0.99)
_PEM_CUT = Rule("private_key", _PEM_BEGIN, 0.0, "private key (PEM, cut short)", ("PRIVATE KEY",),
                score=0.9)


def placeholder(value: str) -> bool:
    return _PLACEHOLDER.search(value) is not None or looks_sequential(value)


def _needle_rx(needles: Iterable[str]) -> re.Pattern[str]:
    """One pattern that finds any of ``needles`` (longest first); one that never matches for none."""
    alts = sorted(set(needles), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, alts)) if alts else "(?!)")


@register_detector("secrets")
class SecretsDetector:
    name = "secrets"

    def __init__(self, kinds: list[str] | None = None, min_entropy_generic: float = 3.0) -> None:
        unknown = set(kinds or ()) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown secret kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        self.kinds = set(kinds or ())
        self.rules = [r for r in RULES if not kinds or r.kind in kinds]
        self.assignments = not kinds or "password_assignment" in kinds
        self.min_generic = min_entropy_generic
        # One search for every needle at once (text and lower-cased text): a text that holds none
        # skips the rules, whose own ``in`` tests stay the exact gate.
        self._any_cased = _needle_rx(n for r in self.rules if not r.lower for n in r.needles)
        self._any_lower = _needle_rx(
            [*(n for r in self.rules if r.lower for n in r.needles), *_ASSIGN_NEEDLES, "private key"]
        )

    def _keep(self, rule: Rule, v: str) -> bool:
        need = self.min_generic if rule.kind == "password_assignment" else rule.min_entropy
        if placeholder(v) or entropy(v) < need:
            return False
        return rule.valid is None or rule.valid(v)

    def _scan(self, text: str) -> list[tuple[int, int, Rule]]:
        hits: list[tuple[int, int, Rule]] = []
        low = text.translate(_LOWER)
        if not self._any_lower.search(low) and not self._any_cased.search(text):
            return hits  # no rule's needle, no assignment word, no PEM header: nothing to find
        for rule in self.rules:
            hay = low if rule.lower else text
            if not any(n in hay for n in rule.needles):
                continue
            for m in rule.pattern.finditer(hay):
                s, e = m.span("v")
                if m.start() and hay[m.start() - 1] in rule.before:
                    continue
                if self._keep(rule, text[s:e]):
                    hits.append((s, e, rule))
        if self.assignments and any(n in low for n in _ASSIGN_NEEDLES):
            for m in _ASSIGN.finditer(low):
                quoted = _QUOTED.match(text, m.end())
                bare = None if quoted else _BARE.match(text, m.end())
                value = quoted.span(2) if quoted else bare.span() if bare else None
                if value and self._keep(_ASSIGNMENT, text[value[0] : value[1]]):
                    hits.append((*value, _ASSIGNMENT))
        if "PRIVATE KEY" in text and (not self.kinds or "private_key" in self.kinds):
            for s, e, whole in pem_blocks(text):
                hits.append((s, e, _PEM_WHOLE if whole else _PEM_CUT))
        return [(s, e, r) for s, e, _, r in disjoint((s, e, r.score, r) for s, e, r in hits)]

    def check(self, ctx: Context, text: Prepared) -> list[Finding]:
        out = []
        for view in text.views:
            for s, e, rule in self._scan(view.text):
                o0, o1 = view.span(s, e)
                out.append(Finding(SECRET, rule.kind, self.name, rule.score, o0, o1, rule.description,
                                   "SECRET", view.encoding))
        return out
