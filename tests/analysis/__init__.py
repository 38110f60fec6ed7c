"""Tests of r3h.analysis: the alignment-vector analysis."""
