"""The three data-mixture baselines of Table 2, each checked against its definition
computed independently (tests/reference/mixture.py, and the toy world's hand-written rewards
here), on the toy 3H datasets."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from r3h.data import load_preference_data
from r3h.data.mixture import (
    HeuristicMixture,
    HummerSelection,
    RewardModelSelection,
    SequenceClassifierScorer,
    even_split,
    read_mixture,
    write_mixture,
)
from r3h.toy.world import HARMFUL, MADE_UP, classify, vocabulary
from tests.reference.mixture import expected_adc, expected_heuristic

TOYS = ["toy_helpsteer", "toy_truthy", "toy_safety", "toy_ultrafeedback", "toy_saferlhf"]
DIMS = ["helpfulness", "honesty", "harmlessness"]


@pytest.fixture(scope="module")
def toy():
    return {name: load_preference_data(name)[0] for name in TOYS}


@pytest.fixture(scope="module")
def toy_extra(toy):
    """The toy datasets plus a small second honesty dataset (30 pairs)."""
    extra = [{**p, "source": "extra_honesty", "id": f"extra_honesty/{i}"}
             for i, p in enumerate(load_preference_data({"name": "toy_truthy", "seed": 7})[0][:30])]
    return {**toy, "extra_honesty": extra}


def ids(pairs):
    return [p["id"] for p in pairs]


# ----------------------------------------------------------------------------- heuristic


@pytest.mark.parametrize("ratio,num,den", [(0.2, 1, 5), ("1/10", 1, 10), (0.05, 1, 20)])
def test_heuristic_counts_follow_the_definition(toy_extra, ratio, num, den):
    n_help, want, per_source = expected_heuristic(toy_extra, num, den)
    pairs, manifest = HeuristicMixture(ratio=ratio, seed=0)(toy_extra)
    help_ids = {p["id"] for ps in toy_extra.values() for p in ps if "helpfulness" in p["dimensions"]}
    got = {p["id"] for p in pairs}
    assert help_ids <= got  # all helpfulness data
    assert len(pairs) == len(got) == n_help + sum(want.values())
    for dim, k in want.items():
        assert sum(1 for p in pairs if "helpfulness" not in p["dimensions"] and dim in p["dimensions"]) == k
    for name, k in per_source.items():
        taken = [p for p in pairs if p["source"] == name]
        assert len(taken) == k and set(ids(taken)) <= set(ids(toy_extra[name]))
        assert manifest["sources"][name]["taken"] == k
    assert manifest["totals"]["helpfulness_pairs"] == n_help
    assert manifest["totals"]["budget"] == n_help * num // den


def test_heuristic_numbers_for_the_papers_ratios(toy):
    # 1984 helpfulness pairs (640 + 576 + 768): 396, 198 and 99 honesty & harmlessness pairs
    for ratio, (ho, ha) in [("1/5", (198, 198)), ("1/10", (99, 99)), ("1/20", (50, 49))]:
        _, m = HeuristicMixture(ratio=ratio)(toy)
        assert m["totals"]["helpfulness_pairs"] == 1984
        assert (m["sources"]["toy_truthy"]["taken"], m["sources"]["toy_safety"]["taken"]) == (ho, ha)


def test_heuristic_within_a_dimension_short_dataset_gives_way(toy_extra):
    _, m = HeuristicMixture(ratio="1/5")(toy_extra)
    # 198 honesty pairs: 99 each, but extra_honesty has 30 -> 168 from toy_truthy
    assert m["sources"]["extra_honesty"]["taken"] == 30 and m["sources"]["toy_truthy"]["taken"] == 168
    assert even_split(7, {"a": 10, "b": 1, "c": 10}) == {"a": 3, "b": 1, "c": 3}
    assert even_split(5, {"a": 1, "b": 1}) == {"a": 1, "b": 1}
    assert even_split(8, {"b": 10, "a": 2, "c": 10}) == {"a": 2, "b": 3, "c": 3}
    assert even_split(9, {"b": 10, "a": 2, "c": 10}) == {"a": 2, "b": 4, "c": 3}


def test_heuristic_on_short_error_and_clip(toy_extra):
    with pytest.raises(ValueError) as e:
        HeuristicMixture(ratio=1.0, on_short="error")(toy_extra)
    msg = str(e.value)
    assert "honesty" in msg and "992" in msg and "350" in msg and "on_short='clip'" in msg
    pairs, m = HeuristicMixture(ratio=1.0, on_short="clip")(toy_extra)
    by = m["totals"]["by_dimension"]
    assert by["honesty"] == {"available": 350, "asked": 992, "taken": 350, "shortfall": 642}
    assert by["harmlessness"] == {"available": 512, "asked": 992, "taken": 512, "shortfall": 480}
    assert len(pairs) == 1984 + 350 + 512
    with pytest.raises(ValueError, match="on_short"):
        HeuristicMixture(on_short="skip")
    with pytest.raises(ValueError, match="ratio"):
        HeuristicMixture(ratio="a fifth")


def test_heuristic_is_deterministic_for_a_seed(toy):
    a, ma = HeuristicMixture(ratio=0.1, seed=3)(toy)
    b, mb = HeuristicMixture(ratio=0.1, seed=3)(toy)
    c, _ = HeuristicMixture(ratio=0.1, seed=4)(toy)
    assert ids(a) == ids(b) and ma == mb
    assert set(ids(a)) != set(ids(c))  # another sample of honesty & harmlessness data
    unshuffled, _ = HeuristicMixture(ratio=0.1, seed=3, shuffle=False)(toy)
    assert sorted(ids(unshuffled)) == sorted(ids(a)) and ids(unshuffled) != ids(a)


def test_heuristic_manifest_contents(toy):
    pairs, m = HeuristicMixture(ratio="1/10", seed=5)(toy, load_counts={"toy_truthy": {"kept": 320}})
    assert m["method"] == "heuristic" and m["seed"] == 5
    assert m["options"] == {"ratio": "1/10", "on_short": "error", "shuffle": True}
    t = m["sources"]["toy_truthy"]
    assert t["available"] == 320 and t["taken"] == 99 and t["dropped"] == 221
    assert t["reasons"] == {"not_sampled": 221} and t["load"] == {"kept": 320}
    assert t["by_dimension"] == {"honesty": {"available": 320, "taken": 99}}
    h = m["sources"]["toy_helpsteer"]
    assert h["available"] == h["taken"] == 640 and h["dropped"] == 0 and h["reasons"] == {}
    assert m["totals"]["taken"] == len(pairs) and m["totals"]["available"] == sum(map(len, toy.values()))
    json.dumps(m)  # plain JSON


# ----------------------------------------------------------------------------- writing


def test_write_mixture_round_trip_and_atomicity(tmp_path, toy):
    pairs, m = HeuristicMixture(ratio="1/20")(toy)
    out = tmp_path / "mix"
    write_mixture(pairs, m, str(out))
    back, manifest = read_mixture(str(out))
    assert back == pairs and manifest["method"] == "heuristic"
    data = (out / "pairs.jsonl").read_bytes()
    assert manifest["files"]["pairs.jsonl"] == {"lines": len(pairs), "sha256": hashlib.sha256(data).hexdigest()}
    assert sorted(os.listdir(tmp_path)) == ["mix"]
    # a failure half-way (an unserialisable pair) leaves neither the folder nor a temporary one
    bad = pairs[:5] + [{**pairs[5], "prompt": object()}]
    with pytest.raises(TypeError):
        write_mixture(bad, m, str(tmp_path / "broken"))
    assert sorted(os.listdir(tmp_path)) == ["mix"]
    # ... and an existing output stays as it was
    with pytest.raises(TypeError):
        write_mixture(bad, m, str(out))
    assert read_mixture(str(out))[0] == pairs and sorted(os.listdir(tmp_path)) == ["mix"]


def test_build_from_registry_and_hydra_style_construction(tmp_path):
    from hydra.utils import instantiate

    mix = instantiate({"_target_": "r3h.data.mixture.HeuristicMixture", "ratio": "1/20", "seed": 2})
    assert isinstance(mix, HeuristicMixture) and mix.seed == 2
    pairs, m = mix.build(TOYS, out_dir=str(tmp_path / "out"))
    assert read_mixture(str(tmp_path / "out"))[0] == pairs
    assert m["sources"]["toy_safety"]["load"]["kept"] == 512 and m["sources"]["toy_safety"]["taken"] == 49


# ----------------------------------------------------------------------------- scorers


def toy_scores(prompt, response):
    """Hand-written rewards of the toy world: helpfulness = gives an answer, honesty =
    says "i do not know" exactly when the question has no answer, harmlessness = does not
    comply with a harmful request."""
    q = prompt[-1]["content"].split()
    c = classify(response[-1]["content"])
    unanswerable, harmful = any(w in q for w in MADE_UP), any(w in q for w in HARMFUL)
    return [1.0 if c in ("number", "comply") else 0.0, 1.0 if (c == "idk") == unanswerable else 0.0,
            0.0 if harmful and c == "comply" else 1.0]


class HandScorer:
    def __init__(self, objectives=tuple(DIMS)):
        self.objectives = list(objectives)
        self.calls = 0

    def __call__(self, prompts, responses):
        self.calls += 1
        return torch.tensor([toy_scores(p, r) for p, r in zip(prompts, responses)])


def test_reward_model_selection_keeps_pairs_preferred_on_every_objective(toy):
    pairs, m = RewardModelSelection(HandScorer())(toy)
    expected = [p for name in TOYS for p in toy[name]
                if all(c >= r for c, r in zip(toy_scores(p["prompt"], p["chosen"]),
                                              toy_scores(p["prompt"], p["rejected"])))]
    assert ids(pairs) == ids(expected)
    for name in TOYS:
        fails = {o: sum(1 for p in toy[name] if toy_scores(p["prompt"], p["chosen"])[j] <
                        toy_scores(p["prompt"], p["rejected"])[j]) for j, o in enumerate(DIMS)}
        kept = sum(1 for p in expected if p["source"] == name)
        s = m["sources"][name]
        assert s["failed_by_objective"] == fails
        assert (s["available"], s["taken"], s["dropped"]) == (len(toy[name]), kept, len(toy[name]) - kept)
    assert m["method"] == "reward_model" and m["totals"]["taken"] == len(pairs)
    assert m["sources"]["toy_truthy"]["taken"] == 64  # the calibration pairs only


def test_reward_model_selection_objectives_subset_and_margin(toy):
    sel = RewardModelSelection(HandScorer(), objectives=["harmlessness"], margin=0.5)
    pairs, m = sel(toy)
    expected = [p for name in TOYS for p in toy[name]
                if toy_scores(p["prompt"], p["chosen"])[2] >= toy_scores(p["prompt"], p["rejected"])[2] + 0.5]
    assert ids(pairs) == ids(expected) and m["options"]["objectives"] == ["harmlessness"]
    with pytest.raises(ValueError, match=r"objective\(s\) \['safety'\] are not among"):
        RewardModelSelection(HandScorer(), objectives=["safety"])


def test_reward_model_selection_checks_the_score_shape(toy):
    class Bad(HandScorer):
        def __call__(self, prompts, responses):
            return torch.zeros(len(prompts), 2)

    with pytest.raises(ValueError, match=r"toy_helpsteer: the scorer returned scores of shape \(640, 2\)"):
        RewardModelSelection(Bad())(toy)


# ----------------------------------------------------------------------------- a real sequence classifier


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A tiny random LlamaForSequenceClassification (num_labels=3) with a WordLevel
    tokenizer over the toy vocabulary and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_rm")
    words = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"] + vocabulary()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.chat_template = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, num_labels=3)
    model = LlamaForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # scores far enough apart to compare
    model.save_pretrained(folder)
    return str(folder)


def direct_scores(folder, pairs, which):
    """The model's logits computed one conversation at a time, without padding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for p in pairs:
            text = tok.apply_chat_template(p["prompt"] + p[which], tokenize=False)
            enc = tok(text, add_special_tokens=False, return_tensors="pt")
            out.append(model(**enc).logits[0])
    return torch.stack(out)


@pytest.mark.slow
def test_sequence_classifier_scorer_matches_the_model(tiny_rm, toy):
    sample = [p for name in TOYS for p in toy[name][:6]]
    assert len({len(p["prompt"][0]["content"].split()) + len(p["chosen"][0]["content"].split())
                for p in sample}) > 1  # lengths differ: batches are padded
    scorer = SequenceClassifierScorer(tiny_rm, DIMS, batch_size=4)
    got = scorer([p["prompt"] for p in sample], [p["chosen"] for p in sample])
    want = direct_scores(tiny_rm, sample, "chosen")
    assert got.shape == (len(sample), 3) and torch.allclose(got, want, atol=1e-5)
    # truncated from the left to max_length tokens: the end of the response is kept
    short = SequenceClassifierScorer(tiny_rm, DIMS, batch_size=4, max_length=6)
    got = short([p["prompt"] for p in sample], [p["chosen"] for p in sample])
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm).eval()
    with torch.no_grad():
        for g, p in zip(got, sample):
            ids_ = short.tokenizer(short.render(p["prompt"], p["chosen"]), add_special_tokens=False)["input_ids"]
            assert len(ids_) > 6
            assert torch.allclose(g, model(input_ids=torch.tensor([ids_[-6:]])).logits[0], atol=1e-5)
    datasets = {name: toy[name][:6] for name in TOYS}
    pairs, m = RewardModelSelection(scorer)(datasets)
    keep = (want >= direct_scores(tiny_rm, sample, "rejected")).all(dim=1).tolist()
    assert ids(pairs) == [p["id"] for p, k in zip(sample, keep) if k]
    assert 0 < len(pairs) < len(sample) and m["options"]["scorer"] == tiny_rm


def test_sequence_classifier_scorer_num_labels_mismatch(tiny_rm):
    with pytest.raises(ValueError) as e:
        SequenceClassifierScorer(tiny_rm, ["helpfulness", "harmlessness"])
    msg = str(e.value)
    assert tiny_rm in msg and "num_labels=3" in msg and "2 objectives" in msg
    with pytest.raises(ValueError, match="num_labels=3"):
        RewardModelSelection({"model": tiny_rm, "objectives": ["a", "b", "c", "d"]})


# ----------------------------------------------------------------------------- Hummer


def test_hummer_adc_and_selection(toy):
    pairs, m = HummerSelection(HandScorer(), threshold=0.2)(toy)
    kept = []
    for name in TOYS:
        conflict, adc = expected_adc(toy[name], toy_scores, DIMS)
        s = m["sources"][name]
        assert s["conflict"] == pytest.approx(conflict) and s["adc"] == pytest.approx(adc)
        assert s["decision"] == ("kept" if adc <= 0.2 else "left_out")
        kept += toy[name] if adc <= 0.2 else []
    assert ids(pairs) == ids(kept)
    # the honesty data prefer "i do not know" (unhelpful), the safety data refusals
    assert m["totals"]["left_out_datasets"] == ["toy_truthy", "toy_safety"]
    assert m["sources"]["toy_truthy"]["adc"] == pytest.approx(0.8)
    assert m["sources"]["toy_helpsteer"]["conflict"] == pytest.approx({"honesty": 0.1, "harmlessness": 0.1})
    loose, m2 = HummerSelection(HandScorer(), threshold=0.9)(toy)
    assert len(loose) == sum(map(len, toy.values())) and m2["totals"]["left_out_datasets"] == []


def test_hummer_objective_names_and_map(toy):
    renamed = HandScorer(objectives=["help", "honest", "safe"])
    # toy_truthy needs a helpfulness reward, toy_helpsteer honesty and harmlessness ones
    with pytest.raises(ValueError, match=r"no objective for the dimension 'helpfulness'.*objective_map"):
        HummerSelection(renamed)(toy)
    assert renamed.calls == 0  # checked before any scoring
    pairs, m = HummerSelection(renamed, objective_map={"helpfulness": "help", "honesty": "honest",
                                                        "harmlessness": "safe"})(toy)
    ref, _ = HummerSelection(HandScorer())(toy)
    assert ids(pairs) == ids(ref)
    with pytest.raises(ValueError, match="objective_map keys"):
        HummerSelection(HandScorer(), objective_map={"safety": "safe"})
