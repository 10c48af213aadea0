"""Model sources, import and the catalog of imported models.

A model reference is a Hugging Face id, a local folder, a GGUF file, or ``pkg:<package>/<path>``
(a file shipped inside an installed Python package). Import resolves a reference to local files,
converts once to the format an engine needs (GGUF to a Hugging Face folder for vLLM) and records a
manifest in ``$M2A_HOME/models``. Imports only ``m2a.config``.
"""
