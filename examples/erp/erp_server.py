"""A small demo ERP as an MCP server (streamable HTTP): customers, orders and invoices in SQLite.

Tools over a database it creates on first start with a few rows:

- ``lookup_order(order_id)``: one order, its customer and its invoice;
- ``customer_orders(customer_id)``: a customer's orders, newest first;
- ``invoice_status(invoice_id)``: an invoice's amount, due date and whether it is paid;
- ``find_customer(name)``: customers whose name contains the text;
- ``cancel_order(order_id, reason)``: the one that changes something — the order's status becomes
  ``cancelled`` (kept with the reason in ``cancellations``); an order already cancelled, shipped or
  delivered cannot be cancelled. Its MCP annotations say destructive (``destructiveHint``), the
  others read-only (``readOnlyHint``): hints, which m2a uses only where its admin set no tier.

Run it with ``python examples/erp/erp_server.py --port 8800`` (the endpoint is
``http://127.0.0.1:8800/mcp``) and register it in m2a with ``m2a tools add erp
http://127.0.0.1:8800/mcp --header "Authorization=Bearer <token>" --tier cancel_order=destructive``.
With ``--token`` the server refuses requests without that bearer (m2a's own credential for it); with
``--log FILE`` it appends one JSON line per request: the headers it got and the MCP method, so you
can see what reaches a tool server through m2a (``x-m2a-agent`` names the agent; the agent's own
token never arrives).

With ``--jwks-url URL`` (m2a's ``/.well-known/jwks.json``) it is a third-party executor that checks
m2a's signed intents itself, offline, with ``m2a.trust.verify`` (``IntentCheck``): every
``tools/call`` must carry ``x-m2a-intent``, an intent signed by m2a (``--issuer``, by default the
JWKS URL's origin) for the audience ``m2a:executor:mcp``, for this server (``--server-name``) and
this very tool and arguments, for the agent ``x-m2a-agent`` names, with a person's approval for
``cancel_order``, not used before (a ``SQLiteReplayCache`` beside the database: a replay fails in
every process sharing it). Anything else is answered 403 with a JSON-RPC error naming why, logged,
and nothing runs.

``build_app(db, seen=..., token=..., verify_intents=IntentCheck(...))`` makes the same server as an
ASGI app, for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:  # m2a is imported only when intents are checked
    from m2a.trust.replay import ReplayCache
    from m2a.trust.verify import Intent, JwksSource

log = logging.getLogger("erp")

CUSTOMERS = [
    ("C001", "Acme Tools GmbH", "Berlin"),
    ("C002", "Blue Harbour Ltd", "Dublin"),
    ("C003", "Castillo Foods SA", "Valencia"),
]
ORDERS = [  # id, customer, date, item, quantity, total (EUR), status
    ("SO-1001", "C001", "2025-01-14", "cordless drill", 12, 1188.00, "shipped"),
    ("SO-1002", "C001", "2025-02-03", "safety goggles", 200, 940.00, "delivered"),
    ("SO-1003", "C002", "2025-02-11", "pallet jack", 2, 1570.00, "processing"),
    ("SO-1004", "C003", "2025-02-20", "cold-room shelving", 6, 4310.50, "shipped"),
    ("SO-1005", "C002", "2025-03-01", "label printer", 3, 597.00, "cancelled"),
]
INVOICES = [  # id, order, amount (EUR), due, paid
    ("INV-5001", "SO-1001", 1188.00, "2025-02-13", 1),
    ("INV-5002", "SO-1002", 940.00, "2025-03-05", 0),
    ("INV-5003", "SO-1004", 4310.50, "2025-03-22", 0),
]
FINAL = ("cancelled", "shipped", "delivered")  # an order in one of these cannot be cancelled
AUDIENCE = "m2a:executor:mcp"  # the executor m2a signs MCP tool calls' intents for
INTENT_HEADER = "x-m2a-intent"
AGENT_HEADER = "x-m2a-agent"
APPROVED_ONLY = frozenset({"cancel_order"})  # the ERP's own rule: these need a person's approval
INTENT_REFUSED = -32001  # the JSON-RPC error code of a refused intent (server-defined range)
READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)
DESTRUCTIVE = ToolAnnotations(
    readOnlyHint=False, destructiveHint=True, idempotentHint=False, openWorldHint=False
)


def create_database(path: Path) -> Path:
    """The demo database at ``path`` (made once; an existing file is left as it is)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
            CREATE TABLE orders (
                id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id),
                ordered_on TEXT NOT NULL, item TEXT NOT NULL, quantity INTEGER NOT NULL,
                total_eur REAL NOT NULL, status TEXT NOT NULL
            );
            CREATE TABLE invoices (
                id TEXT PRIMARY KEY, order_id TEXT NOT NULL REFERENCES orders(id),
                amount_eur REAL NOT NULL, due_on TEXT NOT NULL, paid INTEGER NOT NULL
            );
            """
        )
        db.executemany("INSERT INTO customers VALUES (?, ?, ?)", CUSTOMERS)
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)", ORDERS)
        db.executemany("INSERT INTO invoices VALUES (?, ?, ?, ?, ?)", INVOICES)
    return path


def replay_path(db: Path) -> Path:
    """Where the ERP keeps the intents it used (``erp.db`` -> ``erp-intent-uses.db`` beside it)."""
    return db.with_name(f"{db.stem}-intent-uses.db")


class ERP:
    """The queries (each opens the database read-only) and the one change, ``cancel``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.uri = f"file:{path}?mode=ro"

    def _rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with sqlite3.connect(self.uri, uri=True) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(sql, args)]

    def order(self, order_id: str) -> dict[str, Any]:
        rows = self._rows(
            "SELECT o.id AS order_id, o.ordered_on, o.item, o.quantity, o.total_eur, o.status, "
            "c.id AS customer_id, c.name AS customer, i.id AS invoice_id "
            "FROM orders o JOIN customers c ON c.id = o.customer_id "
            "LEFT JOIN invoices i ON i.order_id = o.id WHERE o.id = ?",
            order_id.strip().upper(),
        )
        return rows[0] if rows else {"error": f"no order {order_id!r}"}

    def customer_orders(self, customer_id: str) -> dict[str, Any]:
        customer = self._rows(
            "SELECT id, name, city FROM customers WHERE id = ?", customer_id.strip().upper()
        )
        if not customer:
            return {"error": f"no customer {customer_id!r}"}
        orders = self._rows(
            "SELECT id AS order_id, ordered_on, item, total_eur, status FROM orders "
            "WHERE customer_id = ? ORDER BY ordered_on DESC",
            customer[0]["id"],
        )
        return {"customer": customer[0], "orders": orders}

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        rows = self._rows(
            "SELECT id AS invoice_id, order_id, amount_eur, due_on, paid FROM invoices WHERE id = ?",
            invoice_id.strip().upper(),
        )
        if not rows:
            return {"error": f"no invoice {invoice_id!r}"}
        row = rows[0]
        row["paid"] = bool(row["paid"])
        row["status"] = "paid" if row["paid"] else "open"
        return row

    def find_customer(self, name: str) -> dict[str, Any]:
        pattern = "%" + name.replace("%", "").replace("_", "").strip() + "%"
        return {"customers": self._rows("SELECT id, name, city FROM customers WHERE name LIKE ?", pattern)}

    def cancel(self, order_id: str, reason: str) -> dict[str, Any]:
        """Cancel an order that is not yet shipped; ``ToolError`` (an error result) when it cannot be."""
        oid, why = order_id.strip().upper(), reason.strip()
        if not why:
            raise ToolError("a cancellation needs a reason")
        with contextlib.closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")  # read and change under one write lock
            try:
                row = db.execute("SELECT status FROM orders WHERE id = ?", (oid,)).fetchone()
                if row is None:
                    raise ToolError(f"no order {order_id!r}")
                if row[0] in FINAL:
                    raise ToolError(
                        f"order {oid} is {row[0]}: only an order not yet shipped can be cancelled"
                    )
                db.execute(
                    "CREATE TABLE IF NOT EXISTS cancellations (order_id TEXT PRIMARY KEY "
                    "REFERENCES orders(id), reason TEXT NOT NULL, cancelled_at TEXT NOT NULL)"
                )
                at = datetime.now(UTC).isoformat(timespec="seconds")
                db.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (oid,))
                db.execute("INSERT INTO cancellations VALUES (?, ?, ?)", (oid, why, at))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return {"order_id": oid, "status": "cancelled", "previous_status": row[0], "reason": why,
                "cancelled_at": at}  # fmt: skip


def build_mcp(erp: ERP) -> MCPServer:
    mcp = MCPServer(
        "erp",
        instructions="A demo ERP: customers, orders and invoices; cancel_order changes an order.",
        log_level="WARNING",
    )

    @mcp.tool(annotations=READ_ONLY)
    def lookup_order(order_id: str) -> dict[str, Any]:
        """Look up one sales order by its id (for example SO-1001): item, total, status, customer, invoice."""
        return erp.order(order_id)

    @mcp.tool(annotations=READ_ONLY)
    def customer_orders(customer_id: str) -> dict[str, Any]:
        """A customer's orders, newest first, by the customer's id (for example C001)."""
        return erp.customer_orders(customer_id)

    @mcp.tool(annotations=READ_ONLY)
    def invoice_status(invoice_id: str) -> dict[str, Any]:
        """Whether an invoice (for example INV-5001) is paid, its amount and due date."""
        return erp.invoice(invoice_id)

    @mcp.tool(annotations=READ_ONLY)
    def find_customer(name: str) -> dict[str, Any]:
        """Customers whose name contains the given text."""
        return erp.find_customer(name)

    @mcp.tool(annotations=DESTRUCTIVE)
    def cancel_order(order_id: str, reason: str) -> dict[str, Any]:
        """Cancel a sales order that has not shipped yet (for example SO-1003), giving the reason.
        It cannot be undone."""
        return erp.cancel(order_id, reason)

    return mcp


# -- a third-party executor's check of m2a's intents ---------------------------------------------


class Refusal(Exception):
    """A tools/call the ERP will not run: ``code`` says why (an ``IntentError`` code, or ``missing``,
    ``malformed``, ``wrong_server``, ``wrong_tool``, ``wrong_agent``, ``not_approved``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("a JSON object names one key twice")
    return dict(pairs)


class IntentCheck:
    """What the ERP asks of a ``tools/call`` before it runs it: a valid intent by m2a for it.

    ``jwks``: m2a's JWKS URL (or a ``JwksSource``); ``issuer``: the ``iss`` intents must name (None:
    any, which only a test should want); ``replay``: a ``ReplayCache`` (default: this process's
    memory; the command line uses ``SQLiteReplayCache(replay_path(db))``); ``server``: the name m2a
    knows this server by (None: not checked).
    """

    def __init__(
        self,
        jwks: str | JwksSource,
        issuer: str | None,
        *,
        replay: ReplayCache | None = None,
        server: str | None = "erp",
        audience: str = AUDIENCE,
    ) -> None:
        from m2a.trust.replay import MemoryReplayCache
        from m2a.trust.verify import JwksSource

        self.jwks = JwksSource(jwks) if isinstance(jwks, str) else jwks
        self.issuer = issuer
        self.replay = replay if replay is not None else MemoryReplayCache()
        self.server = server
        self.audience = audience

    async def admit(self, headers: dict[str, str], tool: Any, arguments: Any) -> Intent:
        """The intent for this call, verified and consumed; ``Refusal`` otherwise (nothing consumed
        unless every other check passed)."""
        from m2a.trust.verify import IntentError, averify_intent

        token = headers.get(INTENT_HEADER)
        if not token:
            raise Refusal("missing", f"a tools/call needs m2a's signed intent ({INTENT_HEADER})")
        if not isinstance(tool, str) or not isinstance(arguments, dict | None):
            raise Refusal("malformed", "a tools/call names its tool (a string) and its arguments (an object)")
        try:
            intent = await averify_intent(
                token, self.jwks, audience=self.audience, issuer=self.issuer, arguments=arguments
            )
        except IntentError as exc:
            raise Refusal(exc.code, exc.message) from exc
        if self.server is not None and intent.tool.server != self.server:
            raise Refusal(
                "wrong_server", f"the intent is for server {intent.tool.server!r}, not {self.server!r}"
            )
        if intent.tool.name != tool:
            raise Refusal("wrong_tool", f"the intent is for tool {intent.tool.name!r}, not {tool!r}")
        agent = headers.get(AGENT_HEADER)
        if agent is not None and agent != intent.sub:
            raise Refusal("wrong_agent", f"the intent is for agent {intent.sub!r}, not {agent!r}")
        if tool in APPROVED_ONLY and (intent.tier != "destructive" or not intent.approval):
            raise Refusal("not_approved", f"{tool} runs only on a destructive-tier intent a person approved")
        if not await asyncio.to_thread(self.replay.consume, intent.jti, intent.exp):
            raise Refusal("replayed", f"the intent {intent.jti} was used before: an intent runs once")
        return intent

    async def check(self, headers: dict[str, str], body: bytes) -> tuple[dict[str, Any] | None, Any]:
        """``(verdict, request id)`` for a request's body: None for what is not a tools/call (nothing
        runs there), else ``{"accepted": True, ...}`` or ``{"accepted": False, "code", "message"}``."""
        if not body.strip():
            return None, None
        try:
            message = json.loads(body, object_pairs_hook=_unique_keys)
        except ValueError as exc:  # a key twice could read one way here and another in the server
            return {
                "accepted": False,
                "code": "malformed",
                "message": f"the body is not plain JSON: {exc}",
            }, None
        if not isinstance(message, dict):
            return {
                "accepted": False,
                "code": "malformed",
                "message": "one JSON-RPC message per request",
            }, None
        if message.get("method") != "tools/call":
            return None, None
        rid = message.get("id")
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        tool = params.get("name")
        try:
            intent = await self.admit(headers, tool, params.get("arguments"))
        except Refusal as exc:
            log.warning("refused tools/call %r: %s", tool, exc)
            return {"accepted": False, "tool": tool, "code": exc.code, "message": exc.message}, rid
        log.info("intent %s: %s may call %s (tier %s, approval %s)", intent.jti, intent.sub, tool,
                 intent.tier, intent.approval)  # fmt: skip
        return {"accepted": True, "tool": tool, "jti": intent.jti, "sub": intent.sub, "tier": intent.tier,
                "approval": intent.approval}, rid  # fmt: skip


def _refused(verdict: dict[str, Any], rid: Any) -> JSONResponse:
    """403 with a JSON-RPC error, so an MCP client (m2a's) passes the reason on to the agent."""
    error = {
        "code": INTENT_REFUSED,
        "message": f"the ERP refused the intent ({verdict['code']}): {verdict['message']}",
        "data": {"intent": verdict["code"]},
    }
    return JSONResponse({"jsonrpc": "2.0", "id": rid, "error": error}, status_code=403)


class Watch:
    """ASGI middleware: the bearer check (``token``), the intent check (``verify``) and a record of
    each request (``seen``, ``log``)."""

    def __init__(
        self,
        app: ASGIApp,
        seen: list[dict[str, Any]] | None,
        log: Path | None,
        token: str | None,
        verify: IntentCheck | None = None,
    ):
        self.app, self.seen, self.log, self.token, self.verify = app, seen, log, token, verify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        body = await request.body()
        try:
            message = json.loads(body) if body else None
        except ValueError:
            message = None
        params = message.get("params") if isinstance(message, dict) else None
        entry = {
            "method": message.get("method") if isinstance(message, dict) else None,
            "tool": params.get("name") if isinstance(params, dict) else None,
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        }
        authorized = self.token is None or entry["headers"].get("authorization") == f"Bearer {self.token}"
        verdict, rid = None, None
        if authorized and self.verify is not None:
            verdict, rid = await self.verify.check(entry["headers"], body)
            if verdict is not None:
                entry["intent"] = verdict
        if self.seen is not None:
            self.seen.append(entry)
        if self.log is not None:
            with self.log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        if not authorized:
            await JSONResponse({"error": "unauthorized"}, status_code=401)(scope, receive, send)
            return
        if verdict is not None and not verdict["accepted"]:
            await _refused(verdict, rid)(scope, receive, send)
            return
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def build_app(
    db: Path,
    *,
    seen: list[dict[str, Any]] | None = None,
    log: Path | None = None,
    token: str | None = None,
    verify_intents: IntentCheck | None = None,
) -> ASGIApp:
    """The ERP's MCP server as an ASGI app (stateless streamable HTTP at ``/mcp``); its lifespan
    must run (uvicorn runs it). ``verify_intents``: run a tools/call only on a valid intent of m2a's."""
    mcp = build_mcp(ERP(create_database(db)))
    app = mcp.streamable_http_app(stateless_http=True, json_response=True, host="0.0.0.0")
    return Watch(app, seen, log, token, verify_intents)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="A demo ERP as an MCP server (streamable HTTP at /mcp).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8800)
    parser.add_argument("--db", type=Path, default=Path(__file__).resolve().parent / "erp.db")
    parser.add_argument(
        "--token", default=None, help="Refuse requests without 'Authorization: Bearer TOKEN'."
    )
    parser.add_argument(
        "--log", type=Path, default=None, help="Append each request's headers here (JSON lines)."
    )
    parser.add_argument(
        "--jwks-url", default=None,
        help="m2a's JWKS (http://GATEWAY/.well-known/jwks.json): run a tools/call only on a valid "
        "intent signed by m2a (x-m2a-intent), once.",
    )  # fmt: skip
    parser.add_argument(
        "--issuer", default=None, help="The issuer intents must name (default: the JWKS URL's origin)."
    )
    parser.add_argument(
        "--server-name", default="erp", help="The name m2a knows this server by (m2a tools add NAME)."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)  # its own decisions; other libraries' warnings only
    check = None
    if args.jwks_url:
        from m2a.trust.replay import SQLiteReplayCache

        create_database(args.db)
        issuer = args.issuer or _origin(args.jwks_url)
        replay = SQLiteReplayCache(replay_path(args.db))
        check = IntentCheck(args.jwks_url, issuer, replay=replay, server=args.server_name)
        log.info("checking m2a's intents: JWKS %s, issuer %s, used intents in %s", args.jwks_url, issuer,
                 replay.path)  # fmt: skip
    elif args.issuer:
        parser.error("--issuer needs --jwks-url")
    app = build_app(args.db, log=args.log, token=args.token, verify_intents=check)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
