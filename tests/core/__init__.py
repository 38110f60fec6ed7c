"""Tests of r3h.core: the streaming engine, Fabric ranks, the SVD-factor cache, the shared helpers."""
