"""Batched chat generation for the 3H benchmarks, saved as JSONL and resumable.

`ChatGenerator` renders each prompt (one user message, or a conversation given as a
list of chat messages) with the tokenizer's chat template (or as raw text when
`use_chat_template` is false), left-pads a batch and generates with
Hugging Face `generate`: greedy when `temperature` is 0, else sampling seeded by
`seed` once per batch (so results are reproducible for the same batch size).
With `backend: vllm` (or `auto` when vLLM is installed and a GPU is there) the same
rendered prompts, tokenized the same way, go to vLLM instead: the model is saved to a
temporary folder once and served by `vllm.LLM`, which batches by itself.
A call can override the temperature (MT-Bench samples each category at FastChat's).
`generate_jsonl` writes one record per prompt (`id`, `prompt`, `response`, the
generation settings) and, when the file already exists, reuses a saved answer only for
the same prompt and the same settings: an interrupted evaluation resumes where it
stopped, and a changed prompt or setting is generated again (the resume rule every
benchmark follows, :mod:`r3h.evaluation.benchmarks.base`).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import weakref
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch

from r3h.io.records import read_records, resume_records


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0
    use_chat_template: bool = True
    system_prompt: Optional[str] = None
    # hf (transformers generate), vllm, or auto (vllm when installed and a GPU is there)
    backend: str = "hf"
    # extra vllm.LLM arguments, e.g. {tensor_parallel_size: 2, gpu_memory_utilization: 0.8}
    vllm_kwargs: Optional[Dict[str, Any]] = None


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class ChatGenerator:
    """Generate answers to user prompts with a causal LM and its tokenizer."""

    def __init__(self, model, tokenizer, config: Optional[GenerationConfig] = None, **overrides):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenerationConfig()
        for k, v in overrides.items():
            if not hasattr(self.config, k):
                raise ValueError(f"unknown generation option '{k}'")
            setattr(self.config, k, v)
        self.check()

    def check(self) -> None:
        """Clear errors before any generation: missing chat template, bad settings."""
        c = self.config
        if c.use_chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of this model ({getattr(self.tokenizer, 'name_or_path', '?')}) has no chat "
                "template; give the pool a tokenizer that has one, or set use_chat_template: false"
            )
        if c.max_new_tokens < 1 or c.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be ≥ 1")
        if c.temperature < 0 or not 0 < c.top_p <= 1:
            raise ValueError(f"temperature must be ≥ 0 and top_p in (0, 1]; got {c.temperature}, {c.top_p}")
        if c.backend not in ("hf", "vllm", "auto"):
            raise ValueError(f"backend must be hf, vllm or auto; got {c.backend!r}")
        if c.backend == "vllm" and not vllm_available():
            raise ValueError("backend 'vllm' needs the vllm package (pip install vllm, on a CUDA machine); "
                             "or set backend: hf")

    @property
    def backend(self) -> str:
        """The backend in use: `auto` is vllm when it is installed and a GPU is there, else hf."""
        b = self.config.backend
        if b == "auto":
            return "vllm" if vllm_available() and torch.cuda.is_available() else "hf"
        return b

    def render(self, prompt: Union[str, Sequence[Mapping[str, str]]]) -> str:
        """The text the model sees. ``prompt`` is one user message, or a conversation: a
        list of ``{"role", "content"}`` messages ending with a user turn (multi-turn
        benchmarks such as MT-Bench). Without the chat template, a conversation is its
        messages' contents joined by blank lines."""
        conversation = not isinstance(prompt, str)
        if conversation:
            prompt = [dict(m) for m in prompt]
            if not prompt or any(not {"role", "content"} <= set(m) for m in prompt) or prompt[-1]["role"] != "user":
                raise ValueError("a conversation prompt is a non-empty list of {'role', 'content'} "
                                 "messages ending with a user message")
        if not self.config.use_chat_template:
            return "\n\n".join(m["content"] for m in prompt) if conversation else prompt
        messages = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        if conversation:
            messages.extend({"role": m["role"], "content": m["content"]} for m in prompt)
        else:
            messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def token_ids(self, text: str) -> List[int]:
        """Token ids of a rendered prompt (the chat template already holds its special tokens)."""
        return self.tokenizer(text, add_special_tokens=not self.config.use_chat_template)["input_ids"]

    def generate(self, prompts: Sequence[Union[str, Sequence[Mapping[str, str]]]],
                 temperature: Optional[float] = None) -> List[str]:
        """Answers to ``prompts``; ``temperature`` overrides the config's for this call (MT-Bench's
        per-category temperatures), with the same seeding."""
        c = self.config if temperature is None else replace(self.config, temperature=float(temperature))
        if c.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0; got {c.temperature}")
        if self.backend == "vllm":
            return self._generate_vllm(prompts, c)
        return self._generate_hf(prompts, c)

    def _generate_vllm(self, prompts, c: GenerationConfig) -> List[str]:
        import vllm

        if getattr(self, "_llm", None) is None:
            folder = tempfile.mkdtemp(prefix="r3h-vllm-")
            weakref.finalize(self, shutil.rmtree, folder, True)
            self.model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
            self._llm = vllm.LLM(model=folder, tokenizer=folder, seed=c.seed, **(c.vllm_kwargs or {}))
        params = vllm.SamplingParams(max_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                                     seed=c.seed)
        requests = [{"prompt_token_ids": self.token_ids(self.render(p))} for p in prompts]
        return [o.outputs[0].text.strip() for o in self._llm.generate(requests, params)]

    @torch.no_grad()
    def _generate_hf(self, prompts, c: GenerationConfig) -> List[str]:
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        device = next(self.model.parameters()).device
        out: List[str] = []
        for start in range(0, len(prompts), c.batch_size):
            texts = [self.render(p) for p in prompts[start : start + c.batch_size]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not c.use_chat_template).to(device)
            kwargs = dict(max_new_tokens=c.max_new_tokens, pad_token_id=tok.pad_token_id)
            if c.temperature > 0:
                torch.manual_seed(c.seed + start)
                kwargs.update(do_sample=True, temperature=c.temperature, top_p=c.top_p)
            else:
                kwargs.update(do_sample=False)
            ids = self.model.generate(**enc, **kwargs)
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
        return [o.strip() for o in out]


def read_jsonl(path: str) -> List[dict]:
    """The records of a JSONL file; ``[]`` when it does not exist (:func:`r3h.io.records.read_records`)."""
    return read_records(path, missing_ok=True)


def same_answer_request(record: Mapping, saved: Mapping, settings: Mapping) -> bool:
    """Whether ``saved`` answers ``record`` as asked now: the same prompt and the same
    generation settings (compared as JSON, as they are saved)."""
    return (_as_json(saved.get("prompt")) == _as_json(record["prompt"])
            and _as_json(saved.get("generation")) == _as_json(settings))


def _as_json(x):
    return json.loads(json.dumps(x, ensure_ascii=False))


def generate_jsonl(generator: ChatGenerator, records: Iterable[Mapping], path: str,
                   valid: Optional[Callable[[Mapping, dict], bool]] = None,
                   temperature: Optional[float] = None) -> List[dict]:
    """Answer every record (`id`, `prompt`, any other fields kept) into JSONL at `path`.

    Resumes under :mod:`r3h.io.records`' one policy (the last complete line for an id wins)
    and one rule for answers: a saved answer is reused only when its prompt and its
    generation settings (the generator's config, with `temperature` when given) are those
    asked for now (:func:`same_answer_request`) and, when given, `valid(record, saved)`
    accepts it; any other record is generated again. New answers are appended batch by
    batch, so an interruption loses at most one batch. `temperature` overrides the
    generator's for these records (saved with the other settings in each record's
    `generation`).
    """
    records = list(records)
    settings = asdict(generator.config)
    kwargs = {}
    if temperature is not None:
        settings["temperature"] = float(temperature)
        kwargs["temperature"] = float(temperature)

    def reusable(r: Mapping, saved: dict) -> bool:
        return same_answer_request(r, saved, settings) and (valid is None or valid(r, saved))

    def produce(batch: List[Mapping]) -> List[dict]:
        answers = generator.generate([r["prompt"] for r in batch], **kwargs)
        return [{**r, "id": str(r["id"]), "response": a, "generation": settings} for r, a in zip(batch, answers)]

    ids = [str(r["id"]) for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: prompt ids are not unique")
    done = resume_records(path, records, produce, key_of=lambda r: str(r["id"]), key="id",
                          batch_size=generator.config.batch_size, valid=reusable)
    return [done[str(r["id"])] for r in records]
