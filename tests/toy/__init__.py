"""Tests of r3h.toy: the toy 3H world."""
