"""Tests of r3h.io: checkpoints and their hub aliases, JSONL records, the GGUF reader."""
