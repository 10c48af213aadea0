"""The console's browser security: response headers, the session cookie's flags, CSRF checks.

Every response under ``/console`` carries a strict Content-Security-Policy (no inline script or
style: templates use static files and ``data-`` attributes), ``nosniff``, ``no-referrer`` and
``frame-ancestors 'none'``; pages also carry ``Cache-Control: no-store``. The session cookie is
HttpOnly, SameSite=Strict, Path=/console, Secure when the request came over https (uvicorn turns
a trusted proxy's ``X-Forwarded-Proto`` into the request's scheme).

A state-changing request (any POST) must be same-origin — ``Sec-Fetch-Site`` when the browser
sends it, else ``Origin`` against the request's own host — and its form must carry the session's
CSRF token (hidden field ``csrf``), compared in constant time. ``csrf_ok`` answers both.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "m2a_console"
COOKIE_PATH = "/console"
SIGNIN_COOKIE = "m2a_console_signin"  # the sign-in form's CSRF token, before there is a session
CSRF_FIELD = "csrf"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
PAGE_HEADERS = {"Cache-Control": "no-store"}


def secure_request(request: Request) -> bool:
    """Whether the browser reached us over TLS (so the cookie is sent back only over TLS)."""
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, session_id: str) -> None:
    response.set_cookie(
        COOKIE, session_id, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure_request(request)
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure_request(request)
    )


def same_origin(request: Request) -> bool:
    """False for a request another site made the browser send (Sec-Fetch-Site, else Origin)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return (
            site is not None
            or request.headers.get("referer") is None
            or _same_host(request.headers["referer"], request)
        )
    if origin == "null" and site == "same-origin":
        return True  # a form post under Referrer-Policy: no-referrer: browsers send "Origin: null"
    return _same_host(origin, request)


def _same_host(url: str, request: Request) -> bool:
    if url == "null":
        return False
    try:
        netloc = urlsplit(url).netloc.lower()
    except ValueError:
        return False
    host = request.headers.get("host", "").lower()
    return bool(netloc) and hmac.compare_digest(netloc.encode(), host.encode())


def token_ok(sent: object, expected: str) -> bool:
    """The form's CSRF token against the session's, in constant time."""
    return isinstance(sent, str) and bool(sent) and hmac.compare_digest(sent.encode(), expected.encode())


def csrf_ok(request: Request, sent: object, expected: str) -> bool:
    """A state-changing request is same-origin and carries the session's CSRF token."""
    return same_origin(request) and token_ok(sent, expected)


def add_headers(response: Response, page: bool = True) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if page:
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)
    return response
