"""Engines: start, health-check and supervise model servers (vLLM, llama.cpp, remote URLs).

Engines know nothing of teams, keys or routing; they turn a model configuration into running
OpenAI-compatible endpoints. Imports ``m2a.config``, ``m2a.catalog`` and ``m2a.metal`` only.
"""
