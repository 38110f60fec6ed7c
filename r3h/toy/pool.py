"""The embedded `tiny_3h` pool: the toy 3H world's SFT base and its five DPO experts
(helpfulness, honesty, harmlessness, helpfulness_honesty, helpfulness_harmlessness),
trained on CPU on first use and cached (see `r3h.toy`)."""

from __future__ import annotations

from fusion_bench.mixins.serialization import auto_register_config
from r3h.modelpool.pool import AlignedCausalLMPool
from r3h.toy.build import EXPERTS, build_tiny_3h

__all__ = ["Tiny3HPool"]


@auto_register_config
class Tiny3HPool(AlignedCausalLMPool):
    """The embedded default pool `tiny_3h`: the toy world's SFT base (`_pretrained_`)
    and its DPO experts, trained once (about two minutes on 2 CPU cores) and cached.

    Args:
        cache_dir: where the models are trained and kept; default `$R3H_CACHE` or `~/.cache/r3h`.
        experts: which experts to include, in order (default: all five).
        seed: the toy seed (0 default): another seed trains another base and experts from
            resampled data and another initialisation (same questions and splits).
    """

    def __init__(self, cache_dir=None, experts=None, seed: int = 0, models=None, tokenizer=None, **kwargs):
        chosen = list(experts) if experts is not None else list(EXPERTS)
        unknown = [e for e in chosen if e not in EXPERTS]
        if unknown:
            raise ValueError(f"experts: '{unknown[0]}' is not a tiny_3h expert ({list(EXPERTS)})")
        paths = build_tiny_3h(cache_dir, chosen, seed=int(seed))
        models = {"_pretrained_": paths["_pretrained_"], **{e: paths[e] for e in chosen}}
        super().__init__(models, tokenizer=tokenizer or paths["_pretrained_"], **kwargs)
