"""Tests of r3h.modelpool: merged folders from any pool."""
