"""The judge interface (:class:`Judge`) and the prompted-model judge every model judge
builds on (:class:`TemplateJudge`: templates, cache, parsing)."""

from __future__ import annotations

import abc
import copy
import hashlib
import json
import threading
from typing import Callable, Dict, List, Mapping, Sequence, Tuple, Union

from r3h.evaluation.judges.verdicts import PARSERS, JudgeRequest, JudgeStats, RUBRICS, Verdict, parse_verdict
from r3h.evaluation.judges.templates import DEFAULT_TEMPLATES, Template, template_preset
from r3h.evaluation.judges.cache import _open_cache


# ------------------------------------------------------------------------------- judges


class Judge(abc.ABC):
    """A judge: ``judge(requests) -> verdicts``, one verdict per request, in order.

    ``stats`` accumulates :class:`JudgeStats` over all calls, ``last_stats`` holds the
    last call's.
    """

    #: Identifies the judge in verdicts and cache keys.
    judge_id: str = "judge"

    def __init__(self):
        self.stats = JudgeStats()
        self.last_stats = JudgeStats()

    @abc.abstractmethod
    def judge(self, requests: Sequence[JudgeRequest]) -> List[Verdict]:
        """Judge ``requests``; one :class:`Verdict` per request, in order."""

    def check(self) -> "Judge":
        """Fail fast if the judge cannot work (no key, unreachable, missing model)."""
        return self

    def __call__(self, requests: Sequence[JudgeRequest]) -> List[Verdict]:
        return self.judge(requests)

    def _record(self, verdicts: List[Verdict]) -> List[Verdict]:
        self.last_stats = JudgeStats.from_verdicts(verdicts)
        self.stats = self.stats + self.last_stats
        return verdicts


def _check_requests(requests) -> List[JudgeRequest]:
    requests = list(requests)
    for r in requests:
        if not isinstance(r, JudgeRequest):
            raise TypeError(f"expected JudgeRequest, got {type(r).__name__}")
    return requests


class TemplateJudge(Judge):
    """A judge that prompts a language model with :data:`DEFAULT_TEMPLATES` (updated by
    ``templates``: a mapping, or the name of a :data:`TEMPLATE_PRESETS` entry such as
    ``"md-judge-v0.2"``), parses with :func:`parse_verdict` and caches raw texts.

    ``cache``: ``True`` (default) for :func:`default_judge_cache_path`, a path, a
    :class:`JudgeCache`, or ``None``/``False`` for none. ``refresh_failed``: ask again
    for cached texts that do not parse (by default a cached unparseable text stays a
    counted failure, so reruns are reproducible and free). ``preflight``: run
    :meth:`check` once before the first request that is not cached.

    Subclasses implement :attr:`judge_id` and :meth:`_complete`.
    """

    def __init__(self, *, templates: Union[None, str, Mapping[str, Template]] = None, cache=True,
                 refresh_failed: bool = False, preflight: bool = True):
        super().__init__()
        self.templates: Dict[str, Template] = dict(DEFAULT_TEMPLATES)
        self.preset = templates if isinstance(templates, str) else None
        if isinstance(templates, str):
            templates = template_preset(templates)
        self.templates.update(self._checked_templates(templates or {}))
        self.cache = _open_cache(cache)
        self.refresh_failed = refresh_failed
        self.preflight = preflight
        self._checked = False

    def with_templates(self, templates: Mapping[str, Template]) -> "TemplateJudge":
        """A copy of this judge that uses ``templates`` over its own (same model, endpoint and
        cache; the cache key holds the template, so verdicts never mix)."""
        judge = copy.copy(self)
        judge.templates = dict(self.templates)
        judge.templates.update(self._checked_templates(templates))
        return judge

    @staticmethod
    def _checked_templates(templates: Mapping[str, Template]) -> Dict[str, Template]:
        for key, template in templates.items():
            rubric, _, variant = key.partition(":")
            if rubric not in RUBRICS or variant not in ("single", "single_ref", "multi", "multi_ref"):
                raise ValueError(f"template key {key!r} is not '<rubric>:<single|single_ref|multi|multi_ref>'")
            if not isinstance(template, Template):
                raise TypeError(f"templates[{key!r}] must be a Template")
            if template.parser is not None and PARSERS.get(template.parser, (None,))[0] != rubric:
                raise ValueError(f"templates[{key!r}]: verdict parser {template.parser!r} does not parse {rubric!r}")
        return dict(templates)

    def template_for(self, request: JudgeRequest) -> Template:
        key = f"{request.rubric}:{request.variant}"
        try:
            return self.templates[key]
        except KeyError:
            raise ValueError(f"no judge template for {key!r}; pass templates={{{key!r}: Template(...)}}") from None

    def render(self, request: JudgeRequest) -> List[Dict[str, str]]:
        """The chat messages sent to the judge model for ``request``."""
        return self.template_for(request).render(request)

    def cache_key(self, request: JudgeRequest) -> str:
        blob = json.dumps({
            "judge": self.judge_id, "rubric": request.rubric,
            "template": self.template_for(request).fingerprint,
            "prompt": request.prompt, "answer": request.answer, "reference": request.reference,
        }, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @abc.abstractmethod
    def _complete(self, items: List[Tuple[str, List[Dict[str, str]]]],
                  emit: Callable[[str, str], None]) -> Dict[str, str]:
        """Generate the judge text for each ``(key, messages)``; call ``emit(key, text)`` as
        each completes (thread-safe). Return ``{key: error message}`` for requests that got
        no text (or raise)."""

    def judge(self, requests: Sequence[JudgeRequest]) -> List[Verdict]:
        requests = _check_requests(requests)
        keys = [self.cache_key(r) for r in requests]
        raws: Dict[str, str] = {}
        cached = set()
        todo: Dict[str, JudgeRequest] = {}
        for key, req in zip(keys, requests):
            if key in raws or key in todo:
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None and (not self.refresh_failed or
                                    parse_verdict(req.rubric, hit, parser=self.template_for(req).parser).ok):
                raws[key] = hit
                cached.add(key)
            else:
                todo[key] = req
        errors: Dict[str, str] = {}
        if todo:
            if self.preflight and not self._checked:
                self.check()
            lock = threading.Lock()

            def emit(key: str, text: str) -> None:
                req = todo[key]
                if self.cache is not None:
                    self.cache.put(key, text, judge=self.judge_id, rubric=req.rubric,
                                   template=self.template_for(req).fingerprint)
                with lock:
                    raws[key] = text

            errors = self._complete([(k, self.render(r)) for k, r in todo.items()], emit) or {}
        verdicts = []
        for key, req in zip(keys, requests):
            if key in raws:
                verdicts.append(parse_verdict(req.rubric, raws[key], parser=self.template_for(req).parser,
                                              cached=key in cached,
                                              judge=self.judge_id, id=req.id))
            else:
                verdicts.append(Verdict(rubric=req.rubric, value=None, raw="", ok=False,
                                        error=errors.get(key, "no judge output"), judge=self.judge_id, id=req.id))
        return self._record(verdicts)
