"""The agents layer as a gateway extension (``gateway/extensions.py``): what ``m2a up`` plugs in.

``agents_extension(cfg)`` is the factory ``create_app(extensions=[...])`` takes. The
``AgentsExtension`` it makes owns, on the gateway's store:

* the registry and its admin API at ``/admin/v1/agents`` (``admin_api.py``, credentials included);
* agent identity (``oauth.py``): ``/oauth/token``, ``/.well-known/oauth-authorization-server`` and
  ``/.well-known/jwks.json``, and the token verifier, set as ``host.access.tokens`` at start;
* the MCP gateway (``mcp_gateway.py``): ``/mcp``, ``/admin/v1/tools|approvals|tool-calls`` and the
  Responses API's ``mcp`` tool type;
* trusted execution (``trust_wiring.py``, on unless ``trust.enabled`` is false): every tool call
  through the policy, approval, intent, executor, receipt and audit path; ``/admin/v1/policies``;
  the egress proxy.

A gateway without a store (no teams, only the admin key) has no registry: the extension then serves
nothing, and ``/admin/v1/agents`` is not there.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Match, NoMatchFound, get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from m2a.agents.admin_api import PREFIX, create_agents_api
from m2a.agents.mcp_gateway import ToolsExtension  # tools (the MCP gateway)
from m2a.agents.oauth import IdentityService  # agent identity: keys, tokens, OAuth routes, verifier
from m2a.agents.registry import Registry
from m2a.config import AgentsConfig, TrustConfig
from m2a.gateway.extensions import ExtensionFactory, Host


class Under(BaseRoute):
    """Every HTTP path at or under ``prefix`` goes to ``app``, the path unchanged: unlike a
    ``Mount``, the prefix itself (``/admin/v1/agents``, no slash) is served too, not redirected."""

    def __init__(self, prefix: str, app: ASGIApp) -> None:
        self.prefix = prefix.rstrip("/")
        self.app = app

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http":
            path = get_route_path(scope)
            if path == self.prefix or path.startswith(self.prefix + "/"):
                return Match.FULL, {"endpoint": self.app}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: object) -> object:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class AgentsExtension:
    """The registry and its admin API, agent identity and tokens, the MCP gateway."""

    def __init__(self, host: Host, cfg: AgentsConfig, trust: TrustConfig | None = None) -> None:
        self.host = host
        self.cfg = cfg
        self.registry = Registry(host.db, cfg.trust_domain) if host.db is not None else None
        # -- tools: /mcp, /admin/v1/tools|approvals|tool-calls, the Responses `mcp` tool (mcp_gateway.py)
        self.tools = ToolsExtension(host, cfg.approval_timeout_s) if host.db is not None else None
        # -- agent identity (agents/oauth.py): the token endpoint, its metadata and keys, the verifier
        self.identity = IdentityService(host, cfg) if host.identity is not None else None
        # -- trusted execution (trust_wiring.py): the tools' calls take the trusted path
        trust = trust or TrustConfig()
        self.trust = None
        if trust.enabled and self.tools is not None and self.identity is not None and host.db is not None:
            from m2a.agents.trust_wiring import Trust

            access = host.access
            self.trust = Trust(
                trust, host.db, self.identity.keys, self.identity.issuer, self.tools.registry,
                self.tools.store, self.tools.gateway.manifests, home=host.home, tracer=host.tracer,
                approval_timeout_s=cfg.approval_timeout_s, guards=host.guards,
                tokens=lambda token: access.tokens(token),  # type: ignore[misc]  # set at start
            )  # fmt: skip
            self.tools.gateway.trust = self.trust
            self.tools.trust = self.trust

    def routes(self) -> list[BaseRoute]:
        if self.registry is None:
            return []
        api = create_agents_api(self.registry, self.host.access, docs=self.host.cfg.admin_docs)
        tools = self.tools.routes() if self.tools is not None else []  # tools (the MCP gateway)
        if self.trust is not None:  # trusted execution: the policies API
            tools.extend(self.trust.routes(self.host.access, docs=self.host.cfg.admin_docs))
        identity: list[BaseRoute] = []
        if self.identity is not None:  # agent identity: the OAuth routes; credentials name the issuer
            api.state.issuer = self.identity.issuer
            identity = self.identity.routes()
        return [Under(PREFIX, api), *tools, *identity]

    async def start(self) -> None:
        if self.identity is not None:  # agent identity: the verifier becomes Access.tokens
            await self.identity.start()
        if self.tools is not None:  # tools (the MCP gateway)
            await self.tools.start()
        if self.trust is not None:  # trusted execution
            await self.trust.start()

    async def close(self) -> None:
        if self.trust is not None:  # trusted execution
            await self.trust.close()
        if self.tools is not None:  # tools (the MCP gateway)
            await self.tools.close()
        if self.identity is not None:  # agent identity
            await self.identity.close()


def agents_extension(cfg: AgentsConfig | None = None, trust: TrustConfig | None = None) -> ExtensionFactory:
    """The factory for ``create_app(extensions=[...])``."""
    cfg = cfg or AgentsConfig()
    return lambda host: AgentsExtension(host, cfg, trust)
