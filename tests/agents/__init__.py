"""Tests of the agents layer (m2a.agents): registry, versions, identity."""
