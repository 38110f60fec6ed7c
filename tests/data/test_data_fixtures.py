"""The registry's default datasets, read from fixtures laid out as the published files
(issue 11, item 7): tests/fixtures/hub/<owner>__<name> copies each dataset card's splits,
files and features (tests/fixtures/hub/make_fixtures.py names the cards). Each is loaded
through the hub code path -- `datasets.load_dataset(<hub id>, config, split=...)` with only
the id redirected to the folder -- and as a local folder, so a layout the code does not
expect fails here instead of giving zero pairs."""

from __future__ import annotations

import os

import datasets
import pytest

from r3h.data import REGISTRY, load_preference_data
from r3h.data.registry import LIONS_SOURCES, convert_records

HUB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "hub")


def folder_of(hub_id: str) -> str:
    return os.path.join(HUB, hub_id.replace("/", "__"))


#: split -> rows of each fixture (make_fixtures.py)
SPLITS = {
    "helpsteer": {"train": 3, "validation": 1}, "py_dpo": {"train": 3}, "distilabel_orca": {"train": 3},
    "distilabel_capybara": {"train": 3}, "ultrafeedback": {"train_prefs": 3, "test_prefs": 1},
    "pku_saferlhf": {"train": 3, "test": 1}, "nectar": {"train": 3},
}

#: the features every LIONS card declares (dataset_info), as datasets reads them
COMMON = {"prompt": "string", "prompt_id": "string", "score_chosen": "float64", "score_rejected": "float64"}
MESSAGES = ("chosen", "rejected", "messages")


@pytest.fixture()
def hub_redirect(monkeypatch):
    """`datasets.load_dataset` with the hub ids of the fixtures pointed at their folders."""
    real = datasets.load_dataset
    seen = []

    def load_dataset(path, *args, **kwargs):
        seen.append((path, args, kwargs.get("split"), kwargs.get("revision")))
        if isinstance(path, str) and os.path.isdir(folder_of(path)):
            path = folder_of(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return seen


def test_every_lions_default_has_a_fixture():
    assert sorted(s.name for s in LIONS_SOURCES) == sorted(SPLITS)
    for src in LIONS_SOURCES:
        assert os.path.isdir(folder_of(src.hub_id)), src.hub_id
        assert src.split in SPLITS[src.name]


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_fixture_has_the_cards_layout(name):
    """Split names and features of the fixture: those of the card (COMMON, MESSAGES)."""
    folder = folder_of(REGISTRY[name].hub_id)
    for split, n in SPLITS[name].items():
        ds = datasets.load_dataset(folder, split=split)
        assert len(ds) == n
        f = ds.features
        for k, dtype in COMMON.items():
            assert f[k].dtype == dtype, (k, f[k])
        for k in MESSAGES:
            inner = f[k].feature if hasattr(f[k], "feature") else f[k][0]
            assert {kk: v.dtype for kk, v in inner.items()} == {"content": "string", "role": "string"}, (k, f[k])
        assert "other_info" in f and hasattr(f["other_info"], "items")


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_lions_default_loads_through_the_hub_path(name, hub_redirect):
    src = REGISTRY[name]
    pairs, counts = load_preference_data(name)
    assert hub_redirect[-1][0] == src.hub_id and hub_redirect[-1][2] == src.split
    n = SPLITS[name][src.split]
    assert counts["records"] == n and counts["kept"] == n, counts
    raw = datasets.load_dataset(folder_of(src.hub_id), split=src.split)
    for pair, rec in zip(pairs, raw):
        assert pair["source"] == name and pair["dimensions"] == list(src.dimensions)
        assert pair["id"] == f"{name}/{rec['prompt_id']}"
        # the pair's prompt is the conversation before the last (assistant) turn, chosen/rejected that turn
        assert pair["prompt"] == [{"role": m["role"], "content": m["content"]} for m in rec["chosen"][:-1]]
        assert pair["chosen"] == [{"role": "assistant", "content": rec["chosen"][-1]["content"]}]
        assert pair["rejected"] == [{"role": "assistant", "content": rec["rejected"][-1]["content"]}]
        assert pair["prompt"][-1]["role"] == "user" and rec["prompt"] in [m["content"] for m in pair["prompt"]]
    # the other split, by name, and the same records from the folder
    for split, k in SPLITS[name].items():
        got, c = load_preference_data({"name": name, "split": split})
        assert c["kept"] == k
        local, _ = load_preference_data({"name": name, "path": folder_of(src.hub_id), "split": split})
        assert local == got


def test_multi_turn_and_system_prompts_stay_in_the_prompt():
    capy, _ = load_preference_data({"name": "distilabel_capybara",
                                    "path": folder_of(REGISTRY["distilabel_capybara"].hub_id)})
    assert [m["role"] for m in capy[2]["prompt"]] == ["user", "assistant", "user"]
    orca, _ = load_preference_data({"name": "distilabel_orca", "path": folder_of(REGISTRY["distilabel_orca"].hub_id)})
    assert all(p["prompt"][0]["role"] == "system" for p in orca)


def test_a_changed_layout_fails_loudly():
    raw = datasets.load_dataset(folder_of(REGISTRY["helpsteer"].hub_id), split="train")
    rec = dict(raw[0])
    # chosen/rejected as plain strings: not the LIONS layout
    flat = {**rec, "chosen": rec["chosen"][-1]["content"], "rejected": rec["rejected"][-1]["content"]}
    with pytest.raises(ValueError, match=r"helpsteer: record 0, field 'chosen' is a str, not a list of .* LIONS"):
        convert_records("helpsteer", [flat])
    # a renamed score column
    renamed = {k if k != "score_chosen" else "chosen_score": v for k, v in rec.items()}
    with pytest.raises(ValueError, match=r"helpsteer: record 0 has no field 'score_chosen'"):
        convert_records("helpsteer", [renamed])
    # a missing split is named
    with pytest.raises(Exception, match="train_prefs|split"):
        load_preference_data({"name": "ultrafeedback", "path": folder_of(REGISTRY["pku_saferlhf"].hub_id)})


#: the three Table 1 datasets outside LIONS: (registry name, records of the default split, first pair's turns)
OTHERS = {
    "truthy_dpo": (3, "Is claim 0 true?", "No, claim 0 is a misconception."),
    "grath": (3, "pretrained_gen question 0?", "Right 0."),
    "ultrasafety": (3, "[jailbreak] request 0", "I can't help with request 0."),
}


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_defaults_load_through_the_hub_path(name, hub_redirect):
    """Truthy-DPO (one parquet at the root), GRATH (config llama2_7b, split pretrained_gen, JSON
    lines) and UltraSafety (one JSON-lines file) as the hub serves them."""
    src = REGISTRY[name]
    n, prompt, chosen = OTHERS[name]
    pairs, counts = load_preference_data(name)
    assert hub_redirect[-1][0] == src.hub_id and hub_redirect[-1][2] == src.split
    assert counts["records"] == n and counts["kept"] == n, counts
    assert pairs[0]["prompt"][-1] == {"role": "user", "content": prompt}
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": chosen}]
    assert pairs[0]["dimensions"] == list(src.dimensions)


def test_truthy_system_prompt_and_grath_other_split(hub_redirect):
    truthy, _ = load_preference_data("truthy_dpo")
    assert truthy[0]["prompt"][0]["role"] == "user" and truthy[1]["prompt"][0]["role"] == "system"
    assert [p["id"] for p in truthy] == ["truthy_dpo/t0", "truthy_dpo/t1", "truthy_dpo/t2"]
    other, c = load_preference_data({"name": "grath", "split": "selftruth_gen"})
    assert c["kept"] == 2 and other[0]["prompt"][-1]["content"] == "selftruth_gen question 0?"
