"""Tests of r3h.data: the preference datasets, their published layouts, the data-mixture baselines."""
