"""Tests of r3h.tuning (r3h.search, r3h.sweeps): the sweep, the search and its workers."""
