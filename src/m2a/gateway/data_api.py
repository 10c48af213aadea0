"""OpenAI's Files and Vector Stores API over m2a's data library: ``/v1/files`` and
``/v1/vector_stores`` (files, file batches, search), and the service behind them.

Ownership: every file, vector store and batch belongs to the team of the key that made it; another
team's id answers 404, exactly as an id that does not exist (never 403: no probing), and that
includes attaching another team's file to one's own store. Admin keys have no team, so they may not
own data: their calls answer 400 ``team_required`` (use a key of the team).

- Files: multipart upload (``file``, ``purpose``), the size bounded while reading
  (``data.max_file_bytes``, 413 past it); the bytes under ``$M2A_HOME/files/<team_id>/<id>``. Deleting
  a file detaches it from every vector store (its chunks go too).
- Vector stores: create (with ``file_ids``), list, retrieve, modify, delete; ``file_counts``,
  ``status`` (``in_progress`` while a file is) and ``usage_bytes`` as OpenAI reports them.
- Files of a store and batches: attaching queues the file for ingestion (``m2a.data.ingest``);
  retrieving an ``in_progress`` file answers ``openai-poll-after-ms`` so the client's
  ``*_and_poll`` helpers poll briskly. Cancelling a batch cancels its files still in progress.
- Search: ``query`` (a string, or a list: its strings joined into one query), ``filters``,
  ``max_num_results`` (1..50), ``ranking_options.score_threshold`` and
  ``ranking_options.hybrid_search`` weights; ``rewrite_query`` is accepted and ignored (no query
  rewriting model here). The query is embedded as the files were, on the team's behalf (so it is
  metered; a quota that ran out answers 429). Hybrid (vector + keyword, fused) search.

Chunking counts tokens with the embedding model's own tokenizer where its engine names the folder
(``hf:<folder>``, as m2a's vLLM engines do), else with ``chunking.ApproxTokenizer`` (close to, not
exactly, the model's counts). Where only vLLM serves the embedding model, chunks longer than the
model's window are truncated by vLLM for the vector (``truncate_prompt_tokens``); the keyword
index keeps every token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from m2a.config import DataConfig
from m2a.data.chunking import ChunkingError, HFTokenizer, Tokenizer, chunking_strategy
from m2a.data.files import FileBlobs, FileTooLarge
from m2a.data.filters import FilterError, compile_filter, validate_attributes
from m2a.data.ingest import EmbedError, Ingestor
from m2a.data.parse import ParseError, ParseLimits, parse
from m2a.data.search import MAX_RESULTS, SearchError, SearchQuery
from m2a.data.stores import StoreNotFound, VectorBackend, build_backend
from m2a.data.stores.base import attributes_bytes
from m2a.gateway.access import Access
from m2a.gateway.body import parse_json, read_body
from m2a.gateway.data_embed import LoopbackEmbedder
from m2a.gateway.data_shapes import (
    PURPOSES,
    bad,
    batch_obj,
    expires_after,
    file_obj,
    live,
    metadata,
    page_obj,
    paging,
    store_obj,
    string,
    vs_file_obj,
)
from m2a.gateway.errors import GatewayError
from m2a.principal import Principal
from m2a.router.pool import Pool
from m2a.store.data import CursorNotFound, DataStore, new_id
from m2a.store.identity import IdentityStore
from m2a.store.schema import VectorStoreRow

log = logging.getLogger("m2a.gateway.data_api")

MULTIPART_SLACK = 1 << 20  # what a multipart body may carry beyond the file itself
MAX_BATCH = 2000
POLL_AFTER_MS = "200"


def open_backend(cfg: DataConfig, home: Path, identity: IdentityStore) -> VectorBackend:
    """The configured vector backend: SQLite in ``home`` (or ``db_path``), or PostgreSQL at
    ``postgres_url``, by default the gateway's own database when that is PostgreSQL."""
    if cfg.backend == "sqlite":
        return build_backend("sqlite", path=cfg.db_path or Path(home) / "vectors.db")
    url = cfg.postgres_url
    if url is None:
        if identity.engine.dialect.name != "postgresql":
            raise ValueError(
                "data.backend postgres needs data.postgres_url, or a PostgreSQL database_url to share"
            )
        url = identity.engine.url.render_as_string(hide_password=False)
    return build_backend("postgres", url=url)


WINDOW_FILES = (("sentence_bert_config.json", "max_seq_length"), ("config.json", "max_position_embeddings"))


def _window(folder: Path) -> int | None:
    """The model's window less its two special tokens, from its folder (None: not said there)."""
    for name, key in WINDOW_FILES:
        try:
            value = json.loads((folder / name).read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int) and value > 16:
            return value - 2
    return None


class DataService:
    """The rows, the bytes, the vector backend, the embedder and the ingestion queue, for one gateway."""

    def __init__(
        self,
        cfg: DataConfig,
        home: Path,
        identity: IdentityStore,
        access: Access,
        self_url: str | None = None,
        pool: Pool | None = None,
    ) -> None:
        self.cfg = cfg
        self.pool = pool
        self.rows = DataStore(identity.engine)
        self.blobs = FileBlobs(Path(home) / "files")
        self.backend = open_backend(cfg, home, identity)
        self.embedder = LoopbackEmbedder(access, cfg.embedding_model, self_url, extra=self._engine_extras)
        self.ingestor = Ingestor(
            self.rows,
            self.backend,
            self.blobs,
            self.embedder,
            workers=cfg.workers,
            limits=ParseLimits(max_bytes=cfg.max_file_bytes),
            tokenizer=self._tokenizer(),
        )
        self._windows: dict[str, int | None] = {}

    def max_chunk_tokens(self) -> int | None:
        """The embedding model's window in tokens, less its two special tokens, where an engine
        names its folder (sentence-transformers' ``max_seq_length``, else ``max_position_embeddings``):
        an ``auto`` chunk longer than that would be embedded only in part."""
        for ep in self._endpoints():
            if ep.tokenizer and ep.tokenizer.startswith("hf:"):
                if ep.tokenizer not in self._windows:  # read once per folder
                    self._windows[ep.tokenizer] = _window(Path(ep.tokenizer[3:]))
                if self._windows[ep.tokenizer] is not None:
                    return self._windows[ep.tokenizer]
        return None

    def _endpoints(self) -> list[Any]:
        return self.pool.endpoints(self.cfg.embedding_model) if self.pool is not None else []

    def _tokenizer(self) -> Tokenizer | None:
        """The embedding model's own tokenizer where an engine names its folder (``hf:<folder>``)."""
        for ep in self._endpoints():
            if ep.tokenizer and ep.tokenizer.startswith("hf:"):
                try:
                    return HFTokenizer.from_folder(ep.tokenizer[3:])
                except (OSError, RuntimeError, ValueError):
                    log.warning("cannot read the tokenizer of %s; chunking approximates", ep.model)
        return None

    def _engine_extras(self) -> dict[str, Any]:
        """vLLM refuses inputs past the model's length (MiniLM: 512 tokens, chunks: up to 4096):
        where only vLLM serves the model, it truncates them instead (the keyword index keeps all)."""
        eps = self._endpoints()
        return {"truncate_prompt_tokens": -1} if eps and all(e.engine == "vllm" for e in eps) else {}

    async def start(self) -> None:
        await self.embedder.open()
        await self.ingestor.start()

    async def close(self) -> None:
        await self.ingestor.close()
        await self.embedder.close()
        await self.backend.close()


def _team(principal: Principal) -> int:
    if principal.team_id is None:
        raise bad(
            "Files and vector stores belong to a team, and admin keys have none: use a key of the team.",
            code="team_required",
        )
    return principal.team_id


def _no_file(file_id: str, param: str = "file_id") -> GatewayError:
    return GatewayError(404, f"No such File object: {file_id}", param=param, code="not_found")


def _no_store(store_id: str) -> GatewayError:
    return GatewayError(404, f"No vector store found with id '{store_id}'.", param="vector_store_id",
                        code="not_found")  # fmt: skip


async def storage_room(rows: DataStore, team: int) -> None:
    """429 when the team's vector stores already hold its ``storage_bytes`` quota."""
    held = await rows.storage(team)
    if held is None:
        return
    used, limit = held
    if used >= limit:
        raise GatewayError(
            429,
            f"The team's vector stores hold {used} bytes of their storage_bytes quota of {limit}: delete "
            "files or stores, or ask an admin for more, before adding files.",
            code="insufficient_quota",
        )


class DataAPI:
    def __init__(self, access: Access, service: DataService, max_body_bytes: int) -> None:
        self.access = access
        self.svc = service
        self.rows = service.rows
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        r = Route
        vs = "/v1/vector_stores/{vector_store_id}"
        return [
            r("/v1/files", self.upload, methods=["POST"]),
            r("/v1/files", self.list_files, methods=["GET"]),
            r("/v1/files/{file_id}", self.get_file, methods=["GET"]),
            r("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
            r("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
            r("/v1/vector_stores", self.create_store, methods=["POST"]),
            r("/v1/vector_stores", self.list_stores, methods=["GET"]),
            r(vs, self.get_store, methods=["GET"]),
            r(vs, self.modify_store, methods=["POST"]),
            r(vs, self.delete_store, methods=["DELETE"]),
            r(vs + "/search", self.search, methods=["POST"]),
            r(vs + "/files", self.attach, methods=["POST"]),
            r(vs + "/files", self.list_vs_files, methods=["GET"]),
            r(vs + "/files/{file_id}", self.get_vs_file, methods=["GET"]),
            r(vs + "/files/{file_id}", self.update_vs_file, methods=["POST"]),
            r(vs + "/files/{file_id}", self.detach, methods=["DELETE"]),
            r(vs + "/files/{file_id}/content", self.vs_file_content, methods=["GET"]),
            r(vs + "/file_batches", self.create_batch, methods=["POST"]),
            r(vs + "/file_batches/{batch_id}", self.get_batch, methods=["GET"]),
            r(vs + "/file_batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
            r(vs + "/file_batches/{batch_id}/files", self.list_batch_files, methods=["GET"]),
        ]

    # -- helpers --------------------------------------------------------------------------------

    async def _caller(self, request: Request, read: bool = False) -> int:
        """The caller's team. A caller with data scopes (an agent: its manifest's ``data_scopes``)
        may only read, search and list the vector stores those name: 403 for anything else (files,
        writes), 404 for another store (``_store``)."""
        principal = await self.access.principal(request)
        self.svc.embedder.learn(request)
        request.state.data_scopes = principal.data_scopes
        if principal.data_scopes is not None and not read:
            raise GatewayError(
                403,
                "An agent may only read and search the vector stores its manifest's data_scopes name; "
                "files and changes need a key of its team.",
                code="agent_read_only",
            )
        return _team(principal)

    async def _json(self, request: Request) -> dict[str, Any]:
        body = parse_json(await read_body(request, self.max_body_bytes))
        if not isinstance(body, dict):
            raise bad("The request body must be a JSON object.")
        return body

    async def _store(self, team: int, request: Request) -> VectorStoreRow:
        store_id = request.path_params["vector_store_id"]
        scopes = getattr(request.state, "data_scopes", None)
        row = await self.rows.store(team, store_id) if scopes is None or store_id in scopes else None
        if row is None:
            raise _no_store(store_id)
        return row

    async def _store_json(self, row: VectorStoreRow) -> dict[str, Any]:
        return store_obj(row, await self.rows.file_counts(row.id))

    def _attach_fields(self, body: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            attributes = validate_attributes(body.get("attributes"), prefix + "attributes")
            strategy = chunking_strategy(body.get("chunking_strategy"), prefix + "chunking_strategy")
        except (FilterError, ChunkingError) as exc:
            raise bad(str(exc), exc.param) from exc
        window = self.svc.max_chunk_tokens() if strategy.type == "auto" else None
        if window is not None and window < strategy.max_chunk_size_tokens:
            # auto means chunks the embedding model sees whole: reported as the static values used
            strategy = replace(strategy, max_chunk_size_tokens=window, chunk_overlap_tokens=window // 2)
        return attributes, strategy.as_openai()

    async def _settle(self, store_id: str) -> None:
        try:
            usage = await self.svc.backend.usage_bytes(store_id)
        except StoreNotFound:
            usage = 0
        await self.rows.touch_store(store_id, usage)

    async def _queue(self, team: int, store_id: str, file_id: str, attrs: dict[str, Any],
                     strategy: dict[str, Any], batch_id: str | None = None) -> Any:  # fmt: skip
        row = await self.rows.attach(team, store_id, file_id, attrs, strategy, batch_id)
        self.svc.ingestor.submit(store_id, file_id, row.attempt)
        return row

    # -- files ----------------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        team = await self._caller(request)
        limit = self.svc.cfg.max_file_bytes
        too_big = GatewayError(413, f"The file is larger than the limit of {limit} bytes.", param="file",
                               code="file_too_large")  # fmt: skip
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit + MULTIPART_SLACK:
            raise too_big
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await request.receive()
            seen += len(message.get("body", b""))
            if seen > limit + MULTIPART_SLACK:
                raise too_big
            return message

        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise bad("Upload a file as multipart/form-data with the fields 'file' and 'purpose'.", "file")
        form = await Request(request.scope, bounded).form(max_files=1, max_fields=8)
        try:
            upload = form.get("file")
            purpose = form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise bad("Missing required parameter: 'file'.", "file")
            if not isinstance(purpose, str) or purpose not in PURPOSES:
                raise bad(f"Invalid 'purpose': expected one of {', '.join(PURPOSES)}.", "purpose")
            filename = (upload.filename or "upload").replace("\\", "/").rsplit("/", 1)[-1][:512] or "upload"
            file_id = new_id("file-")
            try:
                size = await asyncio.to_thread(self.svc.blobs.write, team, file_id, upload.file, limit)
            except FileTooLarge:
                raise too_big from None
        finally:
            await form.close()
        row = await self.rows.add_file(file_id, team, filename, purpose, size)
        return JSONResponse(file_obj(row))

    async def list_files(self, request: Request) -> Response:
        team = await self._caller(request)
        try:
            page = await self.rows.files(
                team, paging(request, 10000, 10000), request.query_params.get("purpose")
            )
        except CursorNotFound as exc:
            raise bad(str(exc), exc.param) from exc
        return JSONResponse(page_obj(page, file_obj))

    async def get_file(self, request: Request) -> Response:
        team = await self._caller(request)
        row = await self.rows.file(team, request.path_params["file_id"])
        if row is None:
            raise _no_file(request.path_params["file_id"])
        return JSONResponse(file_obj(row))

    async def delete_file(self, request: Request) -> Response:
        team = await self._caller(request)
        file_id = request.path_params["file_id"]
        stores = await self.rows.delete_file(team, file_id)
        if stores is None:
            raise _no_file(file_id)
        for store_id in stores:
            with contextlib.suppress(StoreNotFound):
                await self.svc.backend.delete_file(store_id, file_id)
            await self._settle(store_id)
        await asyncio.to_thread(self.svc.blobs.delete, team, file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    async def file_content(self, request: Request) -> Response:
        team = await self._caller(request)
        file_id = request.path_params["file_id"]
        if await self.rows.file(team, file_id) is None:
            raise _no_file(file_id)
        try:
            data = await asyncio.to_thread(self.svc.blobs.read, team, file_id)
        except FileNotFoundError:
            raise _no_file(file_id) from None
        return Response(data, media_type="application/octet-stream")

    # -- vector stores --------------------------------------------------------------------------

    async def create_store(self, request: Request) -> Response:
        team = await self._caller(request)
        body = await self._json(request)
        name = string(body, "name", "") or ""
        meta = metadata(body.get("metadata"))
        expiry = expires_after(body.get("expires_after"))
        file_ids = body.get("file_ids") or []
        if not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids):
            raise bad("Invalid 'file_ids': expected a list of file ids.", "file_ids")
        if len(file_ids) > MAX_BATCH:
            raise bad(f"Invalid 'file_ids': at most {MAX_BATCH} files.", "file_ids")
        attrs, strategy = self._attach_fields({"chunking_strategy": body.get("chunking_strategy")})
        owned = await self.rows.files_by_id(team, file_ids)
        if missing := [f for f in file_ids if f not in owned]:
            raise _no_file(missing[0], "file_ids")
        if file_ids:
            await storage_room(self.rows, team)
        row = await self.rows.create_store(team, name, meta, expiry)
        await self.svc.backend.create_store(row.id)
        for file_id in dict.fromkeys(file_ids):
            await self._queue(team, row.id, file_id, attrs, strategy)
        return JSONResponse(await self._store_json(row))

    async def list_stores(self, request: Request) -> Response:
        team = await self._caller(request, read=True)
        try:
            page = await self.rows.stores(team, paging(request))
        except CursorNotFound as exc:
            raise bad(str(exc), exc.param) from exc
        data = page_obj(page, lambda r: {"id": r.id})
        scopes = request.state.data_scopes  # an agent's page shows only the stores it may read
        data["data"] = [await self._store_json(r) for r in page.rows if scopes is None or r.id in scopes]
        return JSONResponse(data)

    async def get_store(self, request: Request) -> Response:
        team = await self._caller(request, read=True)
        return JSONResponse(await self._store_json(await self._store(team, request)))

    async def modify_store(self, request: Request) -> Response:
        team = await self._caller(request)
        row = await self._store(team, request)
        body = await self._json(request)
        changes: dict[str, Any] = {}
        if "name" in body and body["name"] is not None:
            changes["name"] = string(body, "name")
        if "metadata" in body:
            changes["metadata"] = metadata(body["metadata"])
        if "expires_after" in body:
            live(row)  # an expired store's chunks are gone: a new policy cannot bring them back
            changes["expires_after"] = expires_after(body["expires_after"])
        updated = await self.rows.update_store(team, row.id, **changes)
        if updated is None:
            raise _no_store(row.id)
        return JSONResponse(await self._store_json(updated))

    async def delete_store(self, request: Request) -> Response:
        team = await self._caller(request)
        store_id = request.path_params["vector_store_id"]
        if not await self.rows.delete_store(team, store_id):
            raise _no_store(store_id)
        await self.svc.backend.delete_store(store_id)
        return JSONResponse({"id": store_id, "object": "vector_store.deleted", "deleted": True})

    # -- search ---------------------------------------------------------------------------------

    async def search(self, request: Request) -> Response:
        team = await self._caller(request, read=True)
        row = live(await self._store(team, request))
        body = await self._json(request)
        query = body.get("query")
        queries = [query] if isinstance(query, str) else query
        if (
            not isinstance(queries, list)
            or not queries
            or not all(isinstance(q, str) and q.strip() for q in queries)
        ):
            raise bad("Invalid 'query': expected a non-empty string or a list of them.", "query")
        k = body.get("max_num_results", 10)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RESULTS:
            raise bad(f"Invalid 'max_num_results': expected an integer between 1 and {MAX_RESULTS}.",
                      "max_num_results")  # fmt: skip
        ranking = body.get("ranking_options") or {}
        if not isinstance(ranking, dict):
            raise bad("Invalid type for 'ranking_options': expected an object.", "ranking_options")
        threshold = ranking.get("score_threshold", 0.0)
        weights = None
        hybrid = ranking.get("hybrid_search")
        if isinstance(hybrid, dict):
            weights = (hybrid.get("embedding_weight", 1.0), hybrid.get("text_weight", 1.0))
            if not all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights):
                raise bad("Invalid 'ranking_options.hybrid_search': weights are numbers.", "ranking_options")
        try:  # everything checked before the query is embedded (which the team pays for)
            flt = compile_filter(body["filters"]) if body.get("filters") is not None else None
            SearchQuery.make([1.0], "x", k, flt, "hybrid", threshold, weights)
        except (SearchError, FilterError) as exc:
            raise bad(str(exc), exc.param) from exc
        text = "\n".join(queries)
        try:
            [vector] = await self.svc.embedder(team, [text])
        except EmbedError as exc:
            status = exc.status if exc.status in (400, 403, 404, 429) else 502
            raise GatewayError(status, exc.message, param="query", code="embedding_failed") from exc
        try:
            hits = await self.svc.backend.search(row.id, vector, text, k, flt, "hybrid", threshold, weights)
        except (SearchError, FilterError) as exc:
            raise bad(str(exc), exc.param) from exc
        except StoreNotFound:
            raise _no_store(row.id) from None
        names = await self.rows.files_by_id(team, list({h.file_id for h in hits}))
        await self.rows.touch_store(row.id)
        data = [
            {
                "file_id": h.file_id,
                "filename": names[h.file_id].filename if h.file_id in names else "",
                "score": h.score,
                "attributes": h.attributes,
                "content": [{"type": "text", "text": h.text}],
            }
            for h in hits
        ]
        return JSONResponse({"object": "vector_store.search_results.page", "search_query": queries,
                             "data": data, "has_more": False, "next_page": None})  # fmt: skip

    # -- files of a store -----------------------------------------------------------------------

    async def attach(self, request: Request) -> Response:
        team = await self._caller(request)
        store = live(await self._store(team, request))
        body = await self._json(request)
        file_id = body.get("file_id")
        if not isinstance(file_id, str):
            raise bad("Missing required parameter: 'file_id'.", "file_id")
        attrs, strategy = self._attach_fields(body)
        if await self.rows.file(team, file_id) is None:
            raise _no_file(file_id)
        await storage_room(self.rows, team)
        row = await self._queue(team, store.id, file_id, attrs, strategy)
        return JSONResponse(vs_file_obj(row))

    async def _vs_list(self, request: Request, batch_id: str | None = None) -> Response:
        team = await self._caller(request, read=True)
        store = await self._store(team, request)
        if batch_id is not None and await self.rows.batch(team, store.id, batch_id) is None:
            raise GatewayError(404, f"No file batch found with id '{batch_id}'.", param="batch_id",
                               code="not_found")  # fmt: skip
        status = request.query_params.get("filter")
        if status is not None and status not in ("in_progress", "completed", "failed", "cancelled"):
            raise bad("Invalid 'filter': one of in_progress, completed, failed, cancelled.", "filter")
        try:
            page = await self.rows.vs_files(team, store.id, paging(request), status, batch_id)
        except CursorNotFound as exc:
            raise bad(str(exc), exc.param) from exc
        return JSONResponse(page_obj(page, vs_file_obj))

    async def list_vs_files(self, request: Request) -> Response:
        return await self._vs_list(request)

    async def _vs_file(self, request: Request, read: bool = False) -> tuple[int, Any]:
        team = await self._caller(request, read)
        store = await self._store(team, request)
        file_id = request.path_params["file_id"]
        row = await self.rows.vs_file(team, store.id, file_id)
        if row is None:
            raise _no_file(file_id)
        return team, row

    async def get_vs_file(self, request: Request) -> Response:
        _, row = await self._vs_file(request, read=True)
        headers = {"openai-poll-after-ms": POLL_AFTER_MS} if row.status == "in_progress" else None
        return JSONResponse(vs_file_obj(row), headers=headers)

    async def update_vs_file(self, request: Request) -> Response:
        team, row = await self._vs_file(request)
        body = await self._json(request)
        try:
            attrs = validate_attributes(body.get("attributes"))
        except FilterError as exc:
            raise bad(str(exc), exc.param) from exc

        def delta(r: Any) -> int:  # a completed file's usage counts its attributes (stores.base)
            if r.status != "completed":
                return 0
            return attributes_bytes(attrs) - attributes_bytes(json.loads(r.attributes or "{}"))

        updated = await self.rows.set_attributes(team, row.vector_store_id, row.file_id, attrs, delta)
        if updated is None:
            raise _no_file(row.file_id)
        with contextlib.suppress(StoreNotFound):
            await self.svc.backend.set_attributes(row.vector_store_id, row.file_id, attrs)
        await self._settle(row.vector_store_id)
        return JSONResponse(vs_file_obj(updated))

    async def detach(self, request: Request) -> Response:
        team, row = await self._vs_file(request)
        await self.rows.detach(team, row.vector_store_id, row.file_id)
        with contextlib.suppress(StoreNotFound):
            await self.svc.backend.delete_file(row.vector_store_id, row.file_id)
        await self._settle(row.vector_store_id)
        return JSONResponse({"id": row.file_id, "object": "vector_store.file.deleted", "deleted": True})

    async def vs_file_content(self, request: Request) -> Response:
        team, row = await self._vs_file(request, read=True)
        meta = (await self.rows.files_by_id(team, [row.file_id])).get(row.file_id)
        data: list[dict[str, str]] = []
        if meta is not None:
            try:
                raw = await asyncio.to_thread(self.svc.blobs.read, team, row.file_id)
                parsed = await asyncio.to_thread(parse, raw, meta.filename, None, self.svc.ingestor.limits)
                data = [{"type": "text", "text": parsed.text}]
            except (FileNotFoundError, ParseError):
                data = []
        return JSONResponse({"object": "vector_store.file_content.page", "data": data, "has_more": False,
                             "next_page": None})  # fmt: skip

    # -- file batches ---------------------------------------------------------------------------

    async def create_batch(self, request: Request) -> Response:
        team = await self._caller(request)
        store = live(await self._store(team, request))
        body = await self._json(request)
        file_ids, files = body.get("file_ids"), body.get("files")
        if (file_ids is None) == (files is None):
            raise bad("Give one of 'file_ids' or 'files'.", "file_ids")
        items: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        if file_ids is not None:
            if (
                not isinstance(file_ids, list)
                or not file_ids
                or not all(isinstance(f, str) for f in file_ids)
            ):
                raise bad("Invalid 'file_ids': expected a non-empty list of file ids.", "file_ids")
            attrs, strategy = self._attach_fields(body)
            items = [(f, attrs, strategy) for f in dict.fromkeys(file_ids)]
        else:
            if not isinstance(files, list) or not files:
                raise bad("Invalid 'files': expected a non-empty list.", "files")
            for i, item in enumerate(files):
                if not isinstance(item, dict) or not isinstance(item.get("file_id"), str):
                    raise bad(f"Invalid 'files[{i}]': expected an object with 'file_id'.", f"files[{i}]")
                attrs, strategy = self._attach_fields(item, f"files[{i}].")
                items.append((item["file_id"], attrs, strategy))
        if len(items) > MAX_BATCH:
            raise bad(f"At most {MAX_BATCH} files in a batch.", "file_ids")
        owned = await self.rows.files_by_id(team, [f for f, _, _ in items])
        if missing := [f for f, _, _ in items if f not in owned]:
            raise _no_file(missing[0], "file_ids")
        await storage_room(self.rows, team)
        batch = await self.rows.create_batch(team, store.id)
        for file_id, attrs, strategy in items:
            await self._queue(team, store.id, file_id, attrs, strategy, batch.id)
        return JSONResponse(batch_obj(batch, await self.rows.file_counts(store.id, batch.id)))

    async def _batch(self, request: Request, read: bool = False) -> Any:
        team = await self._caller(request, read)
        store = await self._store(team, request)
        batch_id = request.path_params["batch_id"]
        row = await self.rows.batch(team, store.id, batch_id)
        if row is None:
            raise GatewayError(404, f"No file batch found with id '{batch_id}'.", param="batch_id",
                               code="not_found")  # fmt: skip
        return team, row

    async def get_batch(self, request: Request) -> Response:
        _, row = await self._batch(request, read=True)
        obj = batch_obj(row, await self.rows.file_counts(row.vector_store_id, row.id))
        headers = {"openai-poll-after-ms": POLL_AFTER_MS} if obj["status"] == "in_progress" else None
        return JSONResponse(obj, headers=headers)

    async def cancel_batch(self, request: Request) -> Response:
        team, row = await self._batch(request)
        cancelled = await self.rows.cancel_batch(team, row.vector_store_id, row.id)
        assert cancelled is not None
        return JSONResponse(batch_obj(cancelled, await self.rows.file_counts(row.vector_store_id, row.id)))

    async def list_batch_files(self, request: Request) -> Response:
        return await self._vs_list(request, request.path_params["batch_id"])
