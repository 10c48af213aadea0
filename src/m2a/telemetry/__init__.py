"""Telemetry: OpenTelemetry traces (set up once per process, kept in an embedded store, sent on to a
collector when one is configured) and the metrics that go with them.

Cross-cutting: every layer may import it; it imports only ``m2a.config``.
"""
