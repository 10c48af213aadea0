"""Metal: what accelerators this machine has. Imports nothing from higher layers."""
