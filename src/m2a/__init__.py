"""m2a: metal to agent. Run open models on your own hardware and serve them to your organisation."""

__version__ = "0.1.0"
