"""A small demo ERP as an MCP server (streamable HTTP): customers, orders and invoices in SQLite.

Read-only tools over a database it creates on first start with a few rows:

- ``lookup_order(order_id)``: one order, its customer and its invoice;
- ``customer_orders(customer_id)``: a customer's orders, newest first;
- ``invoice_status(invoice_id)``: an invoice's amount, due date and whether it is paid;
- ``find_customer(name)``: customers whose name contains the text.

Run it with ``python examples/erp/erp_server.py --port 8800`` (the endpoint is
``http://127.0.0.1:8800/mcp``) and register it in m2a with ``m2a tools add erp
http://127.0.0.1:8800/mcp --header "Authorization=Bearer <token>"``. With ``--token`` the server
refuses requests without that bearer (m2a's own credential for it); with ``--log FILE`` it appends
one JSON line per request: the headers it got and the MCP method, so you can see what reaches a
tool server through m2a (``x-m2a-agent`` names the agent; the agent's own token never arrives).

``build_app(db, seen=..., token=...)`` makes the same server as an ASGI app, for tests.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Any

from mcp.server import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

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


class ERP:
    """Read-only queries (the database is opened read-only for each one)."""

    def __init__(self, path: Path) -> None:
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


def build_mcp(erp: ERP) -> MCPServer:
    mcp = MCPServer(
        "erp",
        instructions="A demo ERP: customers, orders and invoices (read-only).",
        log_level="WARNING",
    )

    @mcp.tool()
    def lookup_order(order_id: str) -> dict[str, Any]:
        """Look up one sales order by its id (for example SO-1001): item, total, status, customer, invoice."""
        return erp.order(order_id)

    @mcp.tool()
    def customer_orders(customer_id: str) -> dict[str, Any]:
        """A customer's orders, newest first, by the customer's id (for example C001)."""
        return erp.customer_orders(customer_id)

    @mcp.tool()
    def invoice_status(invoice_id: str) -> dict[str, Any]:
        """Whether an invoice (for example INV-5001) is paid, its amount and due date."""
        return erp.invoice(invoice_id)

    @mcp.tool()
    def find_customer(name: str) -> dict[str, Any]:
        """Customers whose name contains the given text."""
        return erp.find_customer(name)

    return mcp


class Watch:
    """ASGI middleware: the bearer check (``token``) and a record of each request (``seen``, ``log``)."""

    def __init__(self, app: ASGIApp, seen: list[dict[str, Any]] | None, log: Path | None, token: str | None):
        self.app, self.seen, self.log, self.token = app, seen, log, token

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
        if self.seen is not None:
            self.seen.append(entry)
        if self.log is not None:
            with self.log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        if self.token is not None and entry["headers"].get("authorization") != f"Bearer {self.token}":
            await JSONResponse({"error": "unauthorized"}, status_code=401)(scope, receive, send)
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
    db: Path, *, seen: list[dict[str, Any]] | None = None, log: Path | None = None, token: str | None = None
) -> ASGIApp:
    """The ERP's MCP server as an ASGI app (stateless streamable HTTP at ``/mcp``); its lifespan
    must run (uvicorn runs it)."""
    mcp = build_mcp(ERP(create_database(db)))
    app = mcp.streamable_http_app(stateless_http=True, json_response=True, host="0.0.0.0")
    return Watch(app, seen, log, token)


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
    args = parser.parse_args()
    app = build_app(args.db, log=args.log, token=args.token)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
