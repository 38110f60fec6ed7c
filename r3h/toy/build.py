"""Train and cache the toy 3H world's models: the SFT base, the five experts, the
data-mixture baselines and the continual stages.

Everything is trained on CPU from the data of `r3h.toy.world`, with the same code
users run on real models (`r3h.training.train_sft`, `r3h.training.train_dpo`, i.e.
TRL's trainers), and cached under `$R3H_CACHE` (default `~/.cache/r3h`) in
`tiny_3h-<VERSION>-<fingerprint>/` (the fingerprint hashes data, recipes, architecture and
training settings). Each model folder is written in one piece (staged, then renamed), so an
interrupted build resumes with the models that are missing. A build that trained something
writes `fingerprints.json` (every stage's hash, `r3h.toy.fingerprints`) and logs it.

The toy recipe differs from the paper's on purpose: a tiny model from scratch needs a
learning rate ~1000× larger, and pure DPO on it collapses (the rejected answers'
probability mass moves to malformed ones: "sorry 6 13 ."); adding the NLL of the
chosen answer (TRL's `loss_type: [sigmoid, sft]`, RPO, Pang et al. 2024) keeps it
stable. `TOY_DPO` holds the values.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Dict, Iterable, List, Optional

from filelock import FileLock, Timeout

from r3h.toy import world

log = logging.getLogger(__name__)

VERSION = "v4"
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
MODEL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, rms_norm_eps=1e-5,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)
TOY_SFT = dict(num_train_epochs=30, learning_rate=3e-3, batch_size=64, warmup_ratio=0.05, max_length=64, seed=0)
TOY_DPO = dict(beta=0.1, learning_rate=5e-4, global_batch_size=32, per_device_batch_size=32, num_train_epochs=4,
               warmup_ratio=0.1, max_length=64, loss_type=["sigmoid", "sft"], seed=0)
#: The toy's training settings, chosen for a reproducible build (docs/toy.md, "Reproducibility"):
#: one intra-op thread (tiny matrices: also the fastest), float64 (saved in float32) and
#: `torch.use_deterministic_algorithms`.
THREADS = 1
TRAIN_DTYPE = "float64"
DETERMINISTIC = True

EXPERTS = list(world.EXPERT_DATA)


def default_cache_dir() -> str:
    return os.environ.get("R3H_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "r3h"))


def fingerprint(seed: int = 0) -> str:
    """A hash of everything that decides the toy models of one seed: data, recipes,
    architecture. It names the cache folder, so changing any of them trains new models."""
    import hashlib
    import json

    what = {"sft": world.sft_records(seed), "data": {d: world.preference_dataset(d, seed) for d in world.DATASETS},
            "experts": world.EXPERT_DATA, "model": MODEL, "sft_recipe": sft_recipe(seed),
            "dpo_recipe": dpo_recipe(seed), "vocab": SPECIAL + world.vocabulary(), "template": CHAT_TEMPLATE,
            "init_seed": seed, "training": training_settings()}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]


def training_settings() -> dict:
    """THREADS, TRAIN_DTYPE, DETERMINISTIC as `train_sft` / `train_dpo` options."""
    return {"torch_threads": THREADS, "train_dtype": TRAIN_DTYPE, "deterministic": DETERMINISTIC}


def sft_recipe(seed: int = 0) -> dict:
    """TOY_SFT for toy seed `seed` (seed 0 is TOY_SFT itself)."""
    return {**TOY_SFT, "seed": TOY_SFT["seed"] + seed}


def dpo_recipe(seed: int = 0) -> dict:
    """TOY_DPO for toy seed `seed` (seed 0 is TOY_DPO itself)."""
    return {**TOY_DPO, "seed": TOY_DPO["seed"] + seed}


def root_dir(cache_dir: Optional[str] = None, seed: int = 0) -> str:
    """`<cache>/tiny_3h-<VERSION>-<fingerprint>` (seed 0) or `tiny_3h-<VERSION>-s<seed>-<fingerprint>`.

    A toy *seed* changes everything random in the build: the SFT and preference data's
    sampling, the model's initialisation and the trainers' seeds; the questions and their
    splits stay the same."""
    if int(seed) < 0:
        raise ValueError(f"seed: a toy seed is an integer >= 0, got {seed!r}")
    cache = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    tag = f"{VERSION}-s{int(seed)}" if seed else VERSION
    return os.path.join(cache, f"tiny_3h-{tag}-{fingerprint(int(seed))}")


def _seed_of(root: str) -> int:
    name = os.path.basename(root.rstrip("/"))
    parts = name.split("-")
    return int(parts[2][1:]) if len(parts) == 4 and parts[2].startswith("s") else 0


def make_tokenizer():
    """A word-level tokenizer over the toy vocabulary, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL + world.vocabulary()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(SPECIAL) + len(world.vocabulary()), **MODEL)
    return LlamaForCausalLM(config)


def _done(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "r3h_train.json"))


def build_base(root: str) -> str:
    """The SFT base (`_pretrained_` of the toy pools)."""
    from r3h.training.sft import train_sft

    seed = _seed_of(root)
    folder = os.path.join(root, "base")
    if not _done(folder):
        log.info("toy 3H world: training the SFT base (once, cached in %s)", root)
        records = [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in world.sft_records(seed)]
        train_sft(make_model(seed), make_tokenizer(), records, folder, cpu=True, **training_settings(),
                  note={"toy_world": VERSION, "toy_seed": seed}, **sft_recipe(seed))
    return folder


def expert_pairs(name: str, seed: int = 0) -> List[dict]:
    return [p for d in world.EXPERT_DATA[name] for p in world.preference_dataset(d, seed)]


def _train(start: str, pairs: List[dict], folder: str, manifest: dict, seed: int = 0) -> str:
    from r3h.training.dpo import train_dpo

    if not _done(folder):
        log.info("toy 3H world: DPO %s (%d pairs)", os.path.basename(folder), len(pairs))
        train_dpo(start, pairs, folder, data_manifest=manifest, cpu=True, disable_tqdm=True, **training_settings(),
                  **dpo_recipe(seed))
    return folder


def build_experts(root: str, names: Optional[Iterable[str]] = None) -> Dict[str, str]:
    """The base and the chosen experts (default all five): name -> folder."""
    names = list(EXPERTS if names is None else names)
    unknown = [n for n in names if n not in world.EXPERT_DATA]
    if unknown:
        raise ValueError(f"'{unknown[0]}' is not a toy 3H expert ({', '.join(EXPERTS)})")
    seed = _seed_of(root)
    base = build_base(root)
    out = {"_pretrained_": base}
    for n in names:
        pairs = expert_pairs(n, seed)
        out[n] = _train(base, pairs, os.path.join(root, n), {"datasets": world.EXPERT_DATA[n], "pairs": len(pairs)},
                        seed)
    return out


@contextlib.contextmanager
def _build_lock(root: str):
    """The cache folder's build lock; says so when another process holds it (it is training,
    which can take minutes) instead of waiting in silence."""
    lock = FileLock(os.path.join(root, ".build.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("toy 3H world: another process is building in %s; waiting for it to finish (%s)",
                    root, lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_tiny_3h(cache_dir: Optional[str] = None, experts: Optional[Iterable[str]] = None,
                  seed: int = 0) -> Dict[str, str]:
    """Train (once) the toy pool of toy seed `seed` under `cache_dir`; return name -> folder
    (`_pretrained_` is the SFT base). Safe to call from several processes: one trains, the
    others wait."""
    root = root_dir(cache_dir, seed)
    os.makedirs(root, exist_ok=True)
    with _build_lock(root):
        before = _trained(root)
        out = build_experts(root, experts)
        _fingerprint_new(root, before)
        return out


def _trained(root: str) -> set:
    from r3h.toy.fingerprints import model_stages

    return set(model_stages(root))


def _fingerprint_new(root: str, before: set) -> None:
    """After a build that trained something: write `<root>/fingerprints.json` and log its lines."""
    from r3h.toy import fingerprints

    if _trained(root) == before and os.path.exists(os.path.join(root, fingerprints.FILE)):
        return
    stages = fingerprints.record_weights(root, _seed_of(root))
    log.info("toy 3H world: stage fingerprints (%s):\n%s", os.path.join(root, fingerprints.FILE),
             "\n".join(fingerprints.lines(stages)))


#: The data-mixture baselines of the paper's Table 2, on all five toy datasets:
#: name -> mixture (built lazily; the reward model is the toy world's exact one).
def baseline_mixtures(seed: int = 0) -> Dict[str, object]:
    from r3h.data import HeuristicMixture, HummerSelection, RewardModelSelection
    from r3h.toy.reward import ToyRewardModel

    return {
        "mixture_heuristic_1_5": HeuristicMixture("1/5", seed=seed),
        "mixture_heuristic_1_10": HeuristicMixture("1/10", seed=seed),
        "mixture_heuristic_1_20": HeuristicMixture("1/20", seed=seed),
        "mixture_reward_model": RewardModelSelection(ToyRewardModel()),
        "mixture_hummer": HummerSelection(ToyRewardModel(), threshold=0.2),
    }


BASELINES = ["mixture_heuristic_1_5", "mixture_heuristic_1_10", "mixture_heuristic_1_20", "mixture_reward_model",
             "mixture_hummer"]
#: The continual setting's stages (the paper's order) and the toy data of each.
CONTINUAL = [("helpfulness_honesty", ["toy_ultrafeedback"]), ("helpfulness_harmlessness", ["toy_saferlhf"]),
             ("helpfulness", ["toy_helpsteer"])]


def _mix(mixture, seed: int, out_dir: str):
    """`mixture` over the five toy datasets of toy seed `seed`, written to `out_dir`."""
    from r3h.data import write_mixture
    from r3h.data.registry import convert_records

    datasets, counts = {}, {}
    for d in world.DATASETS:
        datasets[d], counts[d] = convert_records(d, world.preference_dataset(d, seed))
    pairs, manifest = mixture(datasets, load_counts=counts)
    write_mixture(pairs, manifest, out_dir)
    return pairs, manifest


def build_baselines(cache_dir: Optional[str] = None, names: Optional[Iterable[str]] = None,
                    seed: int = 0) -> Dict[str, str]:
    """Train (once) the data-mixture baselines from the SFT base: name -> folder. Each
    folder's `r3h_train.json` holds the mixture's manifest; the mixed pairs are in
    `<folder>.data/`."""
    from r3h.data import read_mixture

    names = list(BASELINES if names is None else names)
    mixtures = baseline_mixtures(seed)
    unknown = [n for n in names if n not in mixtures]
    if unknown:
        raise ValueError(f"'{unknown[0]}' is not a toy baseline ({', '.join(BASELINES)})")
    root = root_dir(cache_dir, seed)
    os.makedirs(root, exist_ok=True)
    out = {}
    with _build_lock(root):
        before = _trained(root)
        base = build_base(root)
        for n in names:
            folder = os.path.join(root, n)
            if not _done(folder):
                data_dir = folder + ".data"
                if os.path.exists(os.path.join(data_dir, "manifest.json")):
                    pairs, manifest = read_mixture(data_dir)
                else:
                    pairs, manifest = _mix(mixtures[n], seed, data_dir)
                _train(base, pairs, folder, manifest, seed)
            out[n] = folder
        _fingerprint_new(root, before)
    return out


def build_continual(cache_dir: Optional[str] = None, seed: int = 0) -> Dict[str, str]:
    """Train (once) the continual setting: DPO on each stage's data in sequence, every
    stage from the previous one (also its DPO reference): stage name -> folder."""
    root = root_dir(cache_dir, seed)
    os.makedirs(root, exist_ok=True)
    out = {}
    with _build_lock(root):
        before = _trained(root)
        current = build_base(root)
        for i, (name, datasets) in enumerate(CONTINUAL):
            folder = os.path.join(root, "continual", f"stage{i + 1}_{name}")
            pairs = [p for d in datasets for p in world.preference_dataset(d, seed)]
            _train(current, pairs, folder, {"stage": name, "datasets": datasets, "start": current}, seed)
            out[name] = current = folder
        _fingerprint_new(root, before)
    return out
