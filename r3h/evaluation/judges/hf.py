"""A judge that is a local Hugging Face causal LM (e.g. MD-Judge): :class:`HFJudge`."""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Union

from r3h.evaluation.judges.verdicts import JudgeConfigError, JudgeRequest
from r3h.evaluation.judges.templates import TEMPLATE_PRESETS, Template
from r3h.evaluation.judges.base import TemplateJudge


# --------------------------------------------------------------------------- local HF LM


class HFJudge(TemplateJudge):
    """A judge that is a local Hugging Face causal LM (e.g. MD-Judge for ``safety``).

    ``model``: a path or hub id (loaded on first use, or by :meth:`check`), or a loaded
    ``PreTrainedModel`` (then give ``tokenizer``). ``name`` is the judge's identity in
    verdicts and cache keys (default: ``model`` as given, or the loaded model's
    ``name_or_path``). Generation is greedy, ``batch_size`` prompts at a time (sorted by
    length, left padding), at most ``max_new_tokens`` new tokens; ``generate_kwargs`` go
    to ``generate``. ``use_chat_template``: ``None`` uses the tokenizer's chat template
    when it has one (a system message it rejects is merged into the user message),
    ``False`` sends system and user text joined by a blank line, with the tokenizer's
    special tokens -- what MD-Judge v0.1's own ``[INST]`` prompt needs. With a template
    preset (``templates="md-judge-v0.1"`` / ``"md-judge-v0.2"``) ``None`` takes the preset's
    choice (v0.1: plain text; v0.2: the chat template). ``add_generation_prompt``: whether
    the chat template's generation prompt ends the text; ``None`` takes the preset's choice
    (v0.2: no, as its model card's snippet calls ``apply_chat_template`` without it), else yes.
    A chat-template text holds the tokenizer's BOS once, at its start: the card's snippet
    tokenizes the templated text (whose template already starts with BOS) with
    ``add_special_tokens=True``, which would give a second BOS; r3h adds it only where the
    template does not.

    ``revision``: the hub revision of model and tokenizer. ``trust_remote_code``: run the
    Python code a hub repository ships (MD-Judge v0.2 is an InternLM2 model with its own
    modelling code). It is off by default and must be turned on explicitly; a model that
    needs it fails in :meth:`check` with an error that names the option.
    """

    def __init__(self, model, *, tokenizer=None, name: Optional[str] = None, batch_size: int = 8,
                 max_new_tokens: int = 256, device=None, dtype=None, use_chat_template: Optional[bool] = None,
                 add_generation_prompt: Optional[bool] = None,
                 revision: Optional[str] = None, trust_remote_code: bool = False,
                 model_kwargs: Optional[Mapping[str, Any]] = None, generate_kwargs: Optional[Mapping[str, Any]] = None,
                 templates: Union[None, str, Mapping[str, Template]] = None, cache=True,
                 refresh_failed: bool = False, preflight: bool = True):
        super().__init__(templates=templates, cache=cache, refresh_failed=refresh_failed, preflight=preflight)
        if use_chat_template is None and self.preset is not None:
            use_chat_template = bool(TEMPLATE_PRESETS[self.preset]["use_chat_template"])
        if add_generation_prompt is None:
            preset = TEMPLATE_PRESETS[self.preset] if self.preset is not None else {}
            add_generation_prompt = bool(preset.get("add_generation_prompt", True))
        self.add_generation_prompt = bool(add_generation_prompt)
        if not isinstance(trust_remote_code, bool):
            raise TypeError(f"HFJudge: trust_remote_code must be true or false, got {trust_remote_code!r}")
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        self._model_arg = model
        self._tokenizer_arg = tokenizer
        if name is None:
            name = model if isinstance(model, str) else getattr(model, "name_or_path", None)
        if not name:
            raise ValueError("HFJudge needs name= for a model object without name_or_path")
        self.name = str(name)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self.dtype = dtype
        self.use_chat_template = use_chat_template
        self.model_kwargs = dict(model_kwargs or {})
        self.generate_kwargs = dict(generate_kwargs or {})
        self.model = None if isinstance(model, str) else model
        self.tokenizer = None

    @property
    def judge_id(self) -> str:
        return f"hf:{self.name}"

    def load(self) -> "HFJudge":
        """Load tokenizer and model (once)."""
        if self.tokenizer is not None and self.model is not None:
            return self
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = self._tokenizer_arg
        if tok is None:
            if not isinstance(self._model_arg, str):
                raise ValueError("HFJudge with a model object needs tokenizer=")
            tok = self._model_arg
        hub = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        if isinstance(tok, (str, os.PathLike)):
            with self._remote_code_error():
                tok = AutoTokenizer.from_pretrained(os.fspath(tok), **hub)
        tok.padding_side = "left"
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ValueError(f"tokenizer of {self.name} has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
        if self.model is None:
            kwargs = dict(self.model_kwargs)
            if self.dtype is not None:
                major_minor = tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
                kwargs["dtype" if major_minor >= (4, 56) else "torch_dtype"] = self.dtype
            with self._remote_code_error():
                self.model = AutoModelForCausalLM.from_pretrained(self._model_arg, **hub, **kwargs)
        if self.device is not None:
            self.model.to(self.device)
        self.model.eval()
        self.tokenizer = tok
        return self

    @contextlib.contextmanager
    def _remote_code_error(self):
        try:
            yield
        except ValueError as e:
            if "trust_remote_code" not in str(e) or self.trust_remote_code:
                raise
            raise JudgeConfigError(
                f"judge {self.name} ships its own model code, which runs only with trust_remote_code: true "
                f"(HFJudge option; off by default). Read the repository's code before you turn it on.") from e

    def check(self) -> "HFJudge":
        """Load the model and tokenizer, so a wrong path fails before any generation."""
        self.load()
        self._checked = True
        return self

    def _chat_template(self) -> bool:
        if self.use_chat_template is None:
            return getattr(self.tokenizer, "chat_template", None) is not None
        return bool(self.use_chat_template)

    def render_text(self, request: JudgeRequest) -> str:
        """The exact prompt text the model sees for ``request``."""
        self.load()
        return self._text(self.render(request))

    def _text(self, messages: List[Dict[str, str]]) -> str:
        if not self._chat_template():
            return "\n\n".join(m["content"] for m in messages)
        apply = self.tokenizer.apply_chat_template
        try:
            text = apply(messages, tokenize=False, add_generation_prompt=self.add_generation_prompt)
        except Exception:
            if messages[0]["role"] != "system":
                raise
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            text = apply(merged, tokenize=False, add_generation_prompt=self.add_generation_prompt)
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and not text.startswith(bos):  # one BOS: the template's, else the tokenizer's
            text = bos + text
        return text

    def _complete(self, items, emit) -> Dict[str, str]:
        import torch

        self.load()
        tok, model = self.tokenizer, self.model
        chat = self._chat_template()
        texts = [(key, self._text(messages)) for key, messages in items]
        texts.sort(key=lambda kt: len(kt[1]), reverse=True)
        device = next(model.parameters()).device
        gen = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id}
        gen.update(self.generate_kwargs)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            enc = tok([t for _, t in batch], return_tensors="pt", padding=True, add_special_tokens=not chat,
                      return_token_type_ids=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                out = model.generate(**enc, **gen)
            new = out[:, enc["input_ids"].shape[1]:]
            for (key, _), text in zip(batch, tok.batch_decode(new, skip_special_tokens=True)):
                emit(key, text.strip())
        return {}
