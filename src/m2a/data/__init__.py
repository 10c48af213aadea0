"""m2a's data services, the library under ``/v1/files`` and ``/v1/vector_stores``: turning files into
searchable chunks and searching them.

It owns:

- ``parse``: a file's bytes to text (text, Markdown, HTML, PDF, JSON, CSV), bounded, with a
  ``ParseError`` that is safe to show as a file's ``last_error``;
- ``chunking``: OpenAI's chunking strategies (auto, static) over tokens of the embedding model;
- ``filters``: OpenAI's attribute filters (``eq`` … ``nin``, ``and``/``or``) and attribute checks;
- ``search``: a search's parameters and hits, reciprocal rank fusion, keyword queries;
- ``stores``: the vector-store backend interface and its backends (``sqlite``).

It may import ``m2a.config``, ``m2a.principal`` and ``m2a.store``; never ``m2a.gateway`` (the
gateway's routes call this package, not the other way round). Embeddings are not computed here:
the caller passes vectors (through the gateway's embeddings path, so they are metered).

Extension points:

- a vector-store backend: subclass ``stores.VectorBackend`` and register it with
  ``@stores.register_backend("name")`` (PostgreSQL + pgvector is the next one);
- a tokenizer for chunking: anything with ``name`` and ``encode(text) -> [(start, end), ...]``
  (``chunking.Tokenizer``);
- a file format: a branch of ``parse.detect`` and its extractor in ``parse.py``.
"""
