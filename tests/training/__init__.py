"""Tests of r3h.training: DPO and SFT, one process and several."""
