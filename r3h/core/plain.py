"""Moved to `r3h.io.plain` (plain values belong on the ground floor: `r3h.io.model` needs them);
this name is kept so that older imports still work."""

from r3h.io.plain import jsonable, to_container, write_json_atomic  # noqa: F401
