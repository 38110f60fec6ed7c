"""The search space: which options of which methods a search tries, and Optuna's proposals in it.

`methods: {<method>: {<option>: <range>}}`, a range being `{low, high}` (with `log: true`,
`step`, `int: true`), `{choices: [...]}` or a list (categorical), a plain value (fixed), or
`null` (removed: lets a command line drop an option of a preset). `weights` and `preference`
ranges are per expert (`weights.<expert>`); a preference is normalised onto the simplex. A
method named without a space (`methods: [ties, dare]`) gets the space of its preset
`config/method/search/<method>.yaml`. See docs/search.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from r3h.io.plain import to_container
from r3h.methods.configs import load_config

__all__ = ["Param", "PER_EXPERT", "number", "parse_param", "preset_space", "parse_space", "propose",
           "default_params"]

#: options whose range is one value per expert
PER_EXPERT = ("weights", "preference")


@dataclass
class Param:
    """One searched (or fixed) option of one method."""

    option: str
    kind: str  # float | int | categorical | fixed
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: List[Any] = field(default_factory=list)
    value: Any = None

    @property
    def per_expert(self) -> bool:
        return self.option in PER_EXPERT and self.kind in ("float", "int")

    def contains(self, v) -> bool:
        if self.kind == "categorical":
            return v in self.choices
        if self.kind == "fixed":
            return v == self.value
        return isinstance(v, (int, float)) and self.low <= float(v) <= self.high

    def ends(self) -> List[Any]:
        """The values whose acceptance by the method is checked before any merge."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "fixed":
            return [self.value]
        return [self.low, self.high]


def number(where: str, v) -> float:
    """`v` as a finite float, else a ValueError naming `where`."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def parse_param(where: str, option: str, spec) -> Optional[Param]:
    """A `Param` from its range spec (see the module docstring); None for `null`."""
    spec = to_container(spec)
    if spec is None:
        return None
    if isinstance(spec, (list, tuple)):
        spec = {"choices": list(spec)}
    if not isinstance(spec, Mapping):
        return Param(option, "fixed", value=spec)
    if "value" in spec and len(spec) == 1:
        return Param(option, "fixed", value=spec["value"])
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise ValueError(f"{where}: a categorical range takes only `choices`, not {extra[0]!r}")
        choices = list(spec["choices"] or [])
        if not choices:
            raise ValueError(f"{where}: `choices` is empty")
        bad = [c for c in choices if not (c is None or isinstance(c, (str, int, float, bool)))]
        if bad:
            raise ValueError(f"{where}: choices must be plain values (Optuna stores them), got {bad[0]!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"{where}: `choices` repeats a value: {choices}")
        return Param(option, "categorical", choices=choices)
    extra = sorted(set(spec) - {"low", "high", "log", "step", "int"})
    if extra or "low" not in spec or "high" not in spec:
        raise ValueError(f"{where}: a range is {{low, high}} (optional log, step, int), {{choices: [...]}} or a "
                         f"value; got {spec!r}")
    low, high = number(f"{where}.low", spec["low"]), number(f"{where}.high", spec["high"])
    if not low < high:
        raise ValueError(f"{where}: low ({spec['low']!r}) must be below high ({spec['high']!r})")
    is_log, step = bool(spec.get("log", False)), spec.get("step")
    if is_log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0, got {spec['low']!r}")
    if step is not None:
        step = number(f"{where}.step", step)
        if step <= 0 or step > high - low:
            raise ValueError(f"{where}: step must be in (0, high - low], got {spec['step']!r}")
        if is_log:
            raise ValueError(f"{where}: `step` and `log` cannot be combined (Optuna)")
    kind = "int" if spec.get("int", False) else "float"
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ValueError(f"{where}: an int range needs integer ends, got {spec['low']!r}, {spec['high']!r}")
    return Param(option, kind, low=low, high=high, log=is_log, step=step)


def preset_space(method: str) -> Dict[str, Any]:
    """The space of `config/method/search/<method>.yaml` (its `methods.<method>`)."""
    try:
        cfg = load_config("method/search", method)
    except ValueError as exc:
        raise ValueError(f"methods: no search preset for {method!r} ({exc}); give its space explicitly, "
                         f"e.g. methods: {{{method}: {{scaling_factor: {{low: 0.1, high: 1.0}}}}}}") from None
    space = cfg.get("methods") or {}
    if not isinstance(space, Mapping) or method not in space:
        raise ValueError(f"method/search/{method}.yaml: `methods` has no space for {method!r}")
    return dict(space[method] or {})


def parse_space(methods, owned: Sequence[str] = ()) -> Dict[str, Dict[str, Param]]:
    """method name -> option -> Param, from `methods` (a mapping name -> space, or a list of
    names taking their presets' spaces). Only the spelling is checked here, and that no option
    is one of `owned` (set by the search itself); `r3h.tuning.members.MemberRunner` checks the
    options against each method's class."""
    methods = to_container(methods)
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(methods, (list, tuple)):
        if not methods or not all(isinstance(m, str) for m in methods):
            raise ValueError(f"methods: expected method names or a mapping method -> space, got {methods!r}")
        methods = {m: preset_space(m) for m in methods}
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("methods: give the methods to search, e.g. {r_tsvm: {alpha: {low: 0.5, high: 2.0}}}")
    out = {}
    for name, space in methods.items():
        space = to_container(space)
        if space is None:
            space = {}
        if not isinstance(space, Mapping):
            raise ValueError(f"methods.{name}: expected a mapping option -> range, got {space!r}")
        params = {}
        for option, spec in space.items():
            where = f"methods.{name}.{option}"
            if option in owned:
                raise ValueError(f"{where}: '{option}' is set by the search itself")
            p = parse_param(where, str(option), spec)
            if p is not None:
                params[str(option)] = p
        out[str(name)] = params
    return out


def _suggest(trial, key: str, p: Param):
    if p.kind == "int":
        return trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)


def propose(space: Mapping[str, Mapping[str, Param]], trial, experts: Sequence[str]) -> Tuple[str, Dict[str, Any]]:
    """(method, option values) for an Optuna trial: the method is a categorical choice when
    several are searched, its options then named `<method>.<option>`; a per-expert range is one
    value per expert (`<option>.<expert>`), a preference normalised onto the simplex."""
    names = list(space)
    method = trial.suggest_categorical("method", names) if len(names) > 1 else names[0]
    prefix = f"{method}." if len(names) > 1 else ""
    values: Dict[str, Any] = {}
    for option, p in space[method].items():
        key = prefix + option
        if p.kind == "fixed":
            values[option] = p.value
        elif p.kind == "categorical":
            values[option] = trial.suggest_categorical(key, p.choices)
        elif p.per_expert:
            per = {e: _suggest(trial, f"{key}.{e}", p) for e in experts}
            if option == "preference":
                total = sum(per.values())
                per = {e: (v / total if total > 0 else 1.0 / len(per)) for e, v in per.items()}
            values[option] = per
        else:
            values[option] = _suggest(trial, key, p)
    return method, values


def default_params(space: Mapping[str, Mapping[str, Param]], method: str, config: Mapping[str, Any],
                   experts: Sequence[str]) -> Optional[Dict[str, Any]]:
    """Optuna params that reproduce `method` at its defaults (the values of its `config`), or
    None when a default lies outside the space."""
    names = list(space)
    prefix = f"{method}." if len(names) > 1 else ""
    params: Dict[str, Any] = {"method": method} if len(names) > 1 else {}
    for option, p in space[method].items():
        d = config.get(option)
        if p.kind == "fixed":
            continue
        if p.per_expert:
            value = 1.0 if option == "weights" else (p.low + p.high) / 2
            if d is not None or not p.contains(value):
                return None
            params.update({f"{prefix}{option}.{e}": value for e in experts})
        elif p.contains(d):
            params[prefix + option] = d
        else:
            return None
    return params
