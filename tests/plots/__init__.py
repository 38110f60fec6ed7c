"""Tests of r3h.plots."""
