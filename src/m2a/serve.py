"""`m2a up`: plan engines for the configured models, supervise them, and serve the gateway.

This is the one place where the layers meet: metal (inventory) → catalog (import) → engines
(specs, supervisor) → router (pool) → gateway (app). The gateway listens first, so probes and
clients get clear 503s while engines warm up; Ctrl-C or SIGTERM stops the gateway, then every engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from m2a import heap
from m2a.agents.extension import agents_extension
from m2a.catalog.importer import check_reference, import_model
from m2a.config import ModelConfig, Settings
from m2a.console.extension import console_extension
from m2a.engines.base import EngineSpec
from m2a.engines.registry import choose
from m2a.engines.supervisor import Supervisor
from m2a.engines.vllm import publish_kv_events, trace_to
from m2a.gateway.app import create_app
from m2a.gateway.counters import Counters, Memory, RedisCounters
from m2a.gateway.guards import Guards
from m2a.gateway.quota import Quotas
from m2a.metal.inventory import Inventory
from m2a.router.pipeline import Router
from m2a.router.pool import Endpoint, Pool
from m2a.store.db import open_store
from m2a.store.guardrails import GuardrailStore
from m2a.store.identity import IdentityStore
from m2a.store.ledger import Ledger
from m2a.telemetry.exporter import StoreExporter
from m2a.telemetry.relay import Relay
from m2a.telemetry.setup import Tracing, collector_endpoint, store_path
from m2a.telemetry.store import TraceStore

Say = Callable[[str], None]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def listen_socket(host: str, port: int) -> socket.socket:
    """The gateway's socket, bound before any engine starts (raises OSError when taken)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by accepted connections: without it a response written in two pieces can wait
    # for the client's delayed ACK (40 ms) under asyncio's own event loop.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def free_ports(start: int) -> Iterator[int]:
    port = start
    while port < 65535:
        if port_is_free(port):
            yield port
        port += 1
    raise RuntimeError(f"no free port above {start}")


def plan(settings: Settings, inventory: Inventory, say: Say) -> list[EngineSpec]:
    """Import every configured model in the format its engine needs and lay out its replicas.

    Raises SourceError, EngineChoiceError or EngineConfigError (a context that does not fit the KV
    cache...) before anything is started."""
    ports = free_ports(settings.supervisor.base_port)
    specs: list[EngineSpec] = []
    for cfg in settings.models:  # every name checked before anything is imported or converted
        if not (cfg.engine == "remote" or cfg.url or cfg.urls):
            check_reference(settings.home, cfg.name, cfg.source)
    for cfg in settings.models:
        manifest = None
        if cfg.engine == "remote" or cfg.url or cfg.urls:
            engine = choose(cfg)
        else:
            native = import_model(
                settings.home, cfg.name, cfg.source, task=cfg.task, license=cfg.license, progress=say
            )
            fmt = "gguf" if native.path("gguf") else "hf"  # a GGUF file lets llama.cpp serve it too
            engine = choose(cfg, fmt)
            manifest = import_model(
                settings.home,
                cfg.name,
                cfg.source,
                want=engine.needs_format,
                task=cfg.task,
                license=cfg.license,
                progress=say,
            )
        notes: dict[str, None] = {}
        for n in range(cfg.replicas):
            spec = engine.spec(cfg, manifest, next(ports), n, inventory)
            if spec.engine == "vllm" and spec.task == "chat" and cfg.replicas > 1:
                publish_kv_events(spec, settings.home / "run" / "kv")
            specs.append(spec)
            notes.update(dict.fromkeys(spec.notes))
        for note in notes:  # once per model, not per replica
            say(note)
    return specs


def admin_key(settings: Settings) -> tuple[str, bool]:
    """The gateway key: $M2A_ADMIN_KEY, else one generated once and kept in $M2A_HOME (mode 0600)."""
    if settings.admin_key:
        return settings.admin_key, False
    path = settings.home / "admin.key"
    if path.exists():
        return path.read_text().strip(), False
    key = "m2a-" + secrets.token_urlsafe(32)
    settings.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, True


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `run_up` owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def models_from_cli(refs: list[str], engine: str | None) -> list[ModelConfig]:
    """`--model` values: names (built-in or imported) and hub ids serve under their own name, files and
    folders under their stem."""
    models = []
    for ref in refs:
        local = ref.startswith("pkg:") or Path(ref).expanduser().exists()
        name = Path(ref.rstrip("/")).name.removesuffix(".gguf") if local else ref
        models.append(ModelConfig(name=name, source=ref if local else None, engine=engine or "auto"))  # type: ignore[arg-type]
    return models


def max_output(model: ModelConfig | None) -> int | None:
    """The most output tokens a request to ``model`` may ask for: its own setting, else its context."""
    if model is None:
        return None
    return model.max_output_tokens or model.max_model_len


async def run_up(
    settings: Settings, specs: list[EngineSpec], key: str, say: Say, sock: socket.socket | None = None
) -> int:
    """Serve until a signal arrives; always stop every engine before returning."""
    pool = Pool()
    for s in specs:
        pool.add(
            Endpoint(
                s.replica_id,
                s.model,
                s.base_url,
                s.task,
                s.engine,
                s.api_key,
                s.metrics_url,
                max_inflight=s.max_inflight,
                tokenizer=s.tokenizer,
                kv_events=s.kv_events,
                takes_priority=s.takes_priority,
                max_output_tokens=max_output(settings.model(s.model)),
            )
        )
    sup = Supervisor(
        specs,
        settings.supervisor,
        settings.home / "logs",
        on_change=lambda spec, healthy: pool.set_healthy(spec.replica_id, healthy),
        on_event=say,
    )
    try:
        db = await open_store(settings.database_url, settings.home)
    except Exception as exc:  # nothing started yet: say why and stop
        say(f"cannot open the database ({settings.database_url or 'SQLite in ' + str(settings.home)}): {exc}")
        return 1
    try:  # every profile's detectors are built now: a bad rule stops start-up with its reason
        guards = Guards(settings.guardrails, settings.models, GuardrailStore(db))
    except ValueError as exc:
        say(f"invalid guardrail profile: {exc}")
        await db.dispose()
        return 1
    counters: Counters = Memory()
    if settings.redis_url:
        counters = RedisCounters(settings.redis_url, settings.redis_prefix)
    quotas = Quotas(
        counters,
        {m.name: m.price for m in settings.models},
        settings.gateway.reserve_output_tokens,
        stale_s=settings.gateway.upstream_timeout_s + 60,
    )
    ledger = Ledger(db, settings.home / "ledger")
    tel = settings.telemetry
    trace_store = (
        TraceStore(store_path(settings.home), tel.trace_retention_hours * 3600, tel.trace_max_spans)
        if tel.trace_store
        else None
    )
    tracing = None
    if tel.tracing:
        tracing = Tracing(tel, StoreExporter(trace_store) if trace_store is not None else None)
        tracing.install()
    ingest_token = secrets.token_urlsafe(24)  # what engines present when they send us their spans
    if tracing is not None and trace_store is not None and tel.engine_tracing:
        port = sock.getsockname()[1] if sock is not None else settings.gateway.port
        host = "127.0.0.1" if settings.gateway.host in ("0.0.0.0", "::", "") else settings.gateway.host
        for spec in specs:
            if spec.engine == "vllm" and spec.task == "chat":
                trace_to(spec, f"http://{host}:{port}/otlp/v1/traces", ingest_token)
    app = create_app(
        pool,
        key,
        settings.gateway,
        replica_status=sup.status,
        identity=IdentityStore(db),
        quotas=quotas,
        ledger=ledger,
        usage_store=db,
        tracer=tracing.tracer if tracing is not None else None,
        record_content=tel.record_content,
        trace_store=trace_store,
        ingest_token=ingest_token,
        relay=Relay(collector) if (collector := collector_endpoint(tel)) else None,
        device_metrics=tel.device_metrics,
        metrics_collector=collector_endpoint(tel),
        router=Router(pool, {m.name: m.router for m in settings.models if m.router}, settings.router),
        guards=guards,
        data=settings.data,
        home=settings.home,
        extensions=[
            agents_extension(settings.agents, settings.trust),
            console_extension(economics=settings.economics),
        ],
    )
    gw = settings.gateway
    server = _Server(uvicorn.Config(app, host=gw.host, port=gw.port, log_level="warning", access_log=False))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    (settings.home / "run").mkdir(parents=True, exist_ok=True)
    pidfile = settings.home / "run" / "m2a-up.pid"
    pidfile.write_text(str(os.getpid()))
    sock = sock or listen_socket(gw.host, gw.port)
    port = sock.getsockname()[1]  # the one bound: with port 0, the system chose it
    if app.state.data is not None:  # the data services embed through this gateway's own address
        own = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(gw.host, gw.host)
        app.state.data.embedder.set_base_url(f"http://{f'[{own}]' if ':' in own else own}:{port}")
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if serving.done():
            say(f"the gateway could not listen on {gw.host}:{port}")
            return 1
        say(f"gateway listening on http://{gw.host}:{port}/v1 (engines warming up: /readyz says when)")
        heap.tune_for_serving(gw.gc_gen0_threshold)
        await sup.start()
        ready = asyncio.create_task(sup.wait_ready())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopped, serving}, return_when=asyncio.FIRST_COMPLETED)
        failed = sup.failed()
        if ready.done() and failed and len(failed) == len(specs):
            say("no engine could start (see the errors above): stopping")
            stopped.cancel()
            return 1
        if ready.done() and (ready.result() or failed):
            served = dict.fromkeys(r.spec.model for r in sup.replicas if r.ready_after_s is not None)
            lost = ", ".join(r.spec.replica_id for r in failed)
            lost = f"; not serving {lost}: failed to start" if lost else ""
            say(f"ready: {', '.join(served)} at http://{gw.host}:{port}/v1{lost} (Ctrl-C stops all)")
            say(f"teams and keys: `m2a teams --help`, or the admin API at http://{gw.host}:{port}/admin/docs")
        await asyncio.wait({stopped, serving}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        stopped.cancel()
        say("stopping")
        return 0
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 10)
        await sup.stop()
        with contextlib.suppress(OSError):
            pidfile.unlink()
        await db.dispose()
        if tracing is not None:
            tracing.shutdown()  # flushes the last spans into the store
        if trace_store is not None:
            trace_store.close()
        say("stopped: no engine left running")
