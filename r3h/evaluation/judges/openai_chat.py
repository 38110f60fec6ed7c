"""A judge behind any OpenAI-compatible ``/chat/completions`` endpoint (the OpenAI API, a
local vLLM/TGI server), standard library only: :class:`OpenAIChatJudge`."""

from __future__ import annotations

import concurrent.futures
import http.client
import ipaddress
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from r3h.evaluation.judges.verdicts import JudgeConfigError, JudgeRequestError, JudgeUnavailableError
from r3h.evaluation.judges.templates import Template
from r3h.evaluation.judges.base import TemplateJudge


# ------------------------------------------------------------------- OpenAI-compatible

_RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
_LOCAL_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_local(host: Optional[str]) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host in _LOCAL_HOSTS or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _describe(exc: BaseException, timeout: float) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
        return f"timed out after {timeout:g} s"
    return f"{type(reason).__name__}: {reason}"


class OpenAIChatJudge(TemplateJudge):
    """A judge behind an OpenAI-compatible chat-completions endpoint.

    ``model`` is the served model name (e.g. ``"gpt-4o"``, or the name a vLLM server was
    started with). ``base_url`` (including the ``/v1`` prefix; requests go to
    ``{base_url}/chat/completions``) defaults to ``$R3H_JUDGE_BASE_URL``, then
    ``$OPENAI_BASE_URL``, then ``https://api.openai.com/v1``; ``api_key`` to
    ``$R3H_JUDGE_API_KEY``, then ``$OPENAI_API_KEY``. A loopback endpoint (``localhost``,
    ``127.0.0.1``, ``::1``) may have no key; any other needs one.

    Requests run in a pool of ``max_concurrency`` threads, each with a ``timeout``
    (seconds). 408/409/425/429/5xx answers, connection errors and timeouts are retried,
    up to ``max_attempts`` attempts in all, after ``backoff_base * 2**(attempt-1)``
    seconds (at most ``backoff_max``; at least the server's ``Retry-After``), times a
    factor in [0.5, 1.5) drawn from ``random.Random(seed)`` when ``jitter``. Other HTTP
    errors (400, 401, 404, ...) are not retried. When a request fails for good,
    ``on_error="raise"`` (default) stops the batch and raises :class:`JudgeRequestError`
    (verdicts already received stay cached); ``on_error="fail"`` gives that request a
    failed verdict with ``error`` set, not cached.

    ``temperature`` (default 0, as FastChat), ``max_tokens`` (default 2048, as FastChat;
    ``None`` leaves it out) and ``extra_body`` go into every request body; ``headers``
    into every request. ``sleep`` replaces :func:`time.sleep` for the back-off (tests).
    Proxies from the environment are used for remote endpoints, never for local ones.
    """

    def __init__(self, model: str, *, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 temperature: Optional[float] = 0.0, max_tokens: Optional[int] = 2048,
                 timeout: float = 120.0, max_attempts: int = 6, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, jitter: bool = True, seed: int = 0, max_concurrency: int = 8,
                 extra_body: Optional[Mapping[str, Any]] = None, headers: Optional[Mapping[str, str]] = None,
                 on_error: str = "raise", sleep: Optional[Callable[[float], None]] = None,
                 templates: Union[None, str, Mapping[str, Template]] = None, cache=True,
                 refresh_failed: bool = False, preflight: bool = True):
        super().__init__(templates=templates, cache=cache, refresh_failed=refresh_failed, preflight=preflight)
        if not model:
            raise JudgeConfigError("OpenAIChatJudge needs a model name")
        if max_attempts < 1 or max_concurrency < 1 or timeout <= 0:
            raise ValueError("max_attempts and max_concurrency must be >= 1, timeout > 0")
        if on_error not in ("raise", "fail"):
            raise ValueError("on_error must be 'raise' or 'fail'")
        self.model = model
        base_url = (base_url or os.environ.get("R3H_JUDGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
                    or "https://api.openai.com/v1")
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise JudgeConfigError(f"judge base URL {base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.is_local = _is_local(parsed.hostname)
        self.api_key = api_key or os.environ.get("R3H_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or None
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = float(timeout)
        self.max_attempts = int(max_attempts)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.jitter = jitter
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.max_concurrency = int(max_concurrency)
        self.extra_body = dict(extra_body or {})
        self.headers = dict(headers or {})
        self.on_error = on_error
        self._sleep = sleep or time.sleep
        handlers = [urllib.request.ProxyHandler({})] if self.is_local else []
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def judge_id(self) -> str:  # the brief's cache identity: the judge model's name
        return self.model

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    # -- HTTP
    def _request(self, method: str, url: str, body: Optional[bytes], timeout: float):
        """``(status, headers, body)``; raises URLError/OSError on transport failures."""
        headers = {"Accept": "application/json", "User-Agent": "r3h-judge", **self.headers}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            try:
                return e.code, e.headers, e.read()
            finally:
                e.close()

    def _backoff(self, attempt: int, retry_after: Optional[str]) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        if self.jitter:
            with self._rng_lock:
                delay *= 0.5 + self._rng.random()
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.backoff_max))
            except ValueError:
                pass
        return delay

    def _chat(self, messages: List[Dict[str, str]], stop: Optional[threading.Event] = None) -> str:
        payload: Dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            payload["temperature"] = self.temperature
        if self.max_tokens is not None:
            payload["max_tokens"] = self.max_tokens
        payload.update(self.extra_body)
        body = json.dumps(payload).encode("utf-8")
        last = ""
        status = None
        for attempt in range(1, self.max_attempts + 1):
            retry_after = None
            try:
                status, headers, data = self._request("POST", self.url, body, self.timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                status, last = None, _describe(e, self.timeout)
            else:
                if status == 200:
                    return self._content(data)
                last = f"HTTP {status}: {data[:300].decode('utf-8', 'replace').strip()}"
                if status not in _RETRY_STATUS:
                    raise JudgeRequestError(f"judge request to {self.url} failed: {last} (not retried)",
                                            status=status, attempts=attempt)
                retry_after = headers.get("Retry-After") if headers is not None else None
            if attempt == self.max_attempts or (stop is not None and stop.is_set()):
                break
            self._sleep(self._backoff(attempt, retry_after))
        raise JudgeRequestError(f"judge request to {self.url} failed after {attempt} attempt(s); last error: {last}",
                                status=status, attempts=attempt)

    def _content(self, data: bytes) -> str:
        try:
            message = json.loads(data)["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeRequestError(f"{self.url} answered 200 with no chat completion: "
                                    f"{data[:300].decode('utf-8', 'replace')!r}") from None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content or ""

    def _complete(self, items, emit) -> Dict[str, str]:
        errors: Dict[str, str] = {}
        stop = threading.Event()

        def work(key, messages):
            if stop.is_set():
                return key, None
            try:
                emit(key, self._chat(messages, stop))
            except JudgeRequestError as e:
                return key, e
            return key, None

        first: Optional[BaseException] = None
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items)),
                                                   thread_name_prefix="r3h-judge") as pool:
            futures = [pool.submit(work, key, messages) for key, messages in items]
            for future in concurrent.futures.as_completed(futures):
                try:
                    key, err = future.result()
                except BaseException as e:  # a bug, not a request failure: stop and re-raise
                    stop.set()
                    first = first or e
                    continue
                if err is not None:
                    if self.on_error == "raise":
                        stop.set()
                        first = first or err
                    else:
                        errors[key] = str(err)
        if first is not None:
            raise first
        return errors

    def check(self, verify_model: bool = True) -> "OpenAIChatJudge":
        """Preflight, before any generation: a key is set unless the endpoint is local; the
        endpoint answers ``GET {base_url}/models`` (any HTTP answer other than 401/403
        counts as reachable); with ``verify_model``, ``model`` is among the listed models
        when the endpoint lists any. Raises :class:`JudgeConfigError` or
        :class:`JudgeUnavailableError`; returns ``self``."""
        if not self.api_key and not self.is_local:
            raise JudgeConfigError(
                f"no API key for the judge endpoint {self.base_url}: set R3H_JUDGE_API_KEY (or "
                f"OPENAI_API_KEY), or pass api_key=; only a local endpoint (localhost) may have none")
        url = f"{self.base_url}/models"
        try:
            status, _, data = self._request("GET", url, None, min(self.timeout, 30.0))
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise JudgeUnavailableError(f"judge endpoint {self.base_url} is unreachable "
                                        f"({_describe(e, min(self.timeout, 30.0))})") from None
        if status in (401, 403):
            raise JudgeConfigError(f"judge endpoint {self.base_url} rejected the API key (HTTP {status})")
        if status == 200 and verify_model:
            try:
                ids = [m["id"] for m in json.loads(data).get("data", []) if isinstance(m, dict) and "id" in m]
            except (ValueError, AttributeError, TypeError):
                ids = []
            if ids and self.model not in ids:
                shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
                raise JudgeConfigError(f"model {self.model!r} is not served at {self.base_url}; it lists: {shown}")
        self._checked = True
        return self
