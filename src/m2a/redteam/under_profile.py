"""A red-team run under a chosen guardrail profile, as a team with that profile would be attacked.

``team_key(base_url, admin_key, model, profile)`` makes (or reuses) the team ``redteam-<profile>``
through the gateway's admin API, grants it the model, attaches the profile, and yields a key of
that team made for this run only; the key is revoked when the run ends, however it ends. The
guardrails are the gateway's: the attack goes through them exactly as a real client's would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx

from m2a.redteam.runner import TargetError


def team_name(profile: str) -> str:
    return f"redteam-{profile}"[:64]


def _ok(resp: httpx.Response, what: str, *also: int) -> httpx.Response:
    if resp.status_code >= 400 and resp.status_code not in also:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        raise TargetError(f"could not {what}: {resp.status_code} {message}")
    return resp


@contextlib.contextmanager
def team_key(base_url: str, admin_key: str | None, model: str, profile: str) -> Iterator[str]:
    """A key of a team with ``profile`` attached and ``model`` granted, revoked afterwards."""
    if not admin_key:
        raise TargetError("--guardrails needs the admin key (--key, $M2A_API_KEY or the gateway's own)")
    root = base_url.rstrip("/").removesuffix("/v1")
    team = team_name(profile)
    headers = {"authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=root, headers=headers, timeout=30, trust_env=False) as admin:
        try:
            _ok(admin.post("/admin/v1/teams", json={"name": team}), f"create team {team}", 409)
            _ok(admin.put(f"/admin/v1/teams/{team}/grants/{model}"), f"grant {model} to {team}")
            attach = {"profile": profile, "team": team}
            _ok(admin.put("/admin/v1/guardrails/attachments", json=attach), f"attach profile {profile!r}")
            new_key = {"team": team, "name": "m2a redteam run"}
            made = _ok(admin.post("/admin/v1/keys", json=new_key), "make a key")
        except httpx.HTTPError as exc:
            why = type(exc).__name__
            raise TargetError(f"the gateway's admin API at {root} did not answer: {why}") from exc
        key = made.json()
        try:
            yield key["key"]
        finally:
            with contextlib.suppress(httpx.HTTPError):
                admin.delete(f"/admin/v1/keys/{key['id']}")
