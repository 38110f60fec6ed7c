"""Reference implementations the tests compare r3h with (no r3h code inside)."""
