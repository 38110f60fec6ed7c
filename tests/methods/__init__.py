"""Tests of r3h.methods: every merging method against its reference (tests/reference/) and its peers."""
