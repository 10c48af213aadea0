"""Tests of the web console (m2a.console)."""
