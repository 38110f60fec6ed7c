"""The preference-data layer: each of the ten datasets of Table 1 read from a local file in
its own (hub) layout, the checks on input, and the toy datasets through the registry."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from r3h.data import REGISTRY, load_preference_data, normalize_record, validate_pairs
from r3h.data.preference import parse_transcript, split_conversations
from r3h.data.registry import convert_records, get_source, list_sources, register_source
import r3h.toy  # noqa: F401,E402  registers the toy datasets (r3h.toy.data)


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


def write(tmp_path, name, records, fmt):
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "json":
        path.write_text(json.dumps(records))
    elif fmt == "parquet":
        pd.DataFrame(records).to_parquet(path)
    elif fmt == "csv":
        pd.DataFrame(records).to_csv(path, index=False)
    return str(path)


def load(name, path, **kw):
    return load_preference_data({"name": name, "path": path, **kw})


# ----------------------------------------------------------------------------- the ten layouts


def test_registry_lists_the_ten_datasets_and_the_toys():
    ten = ["helpsteer", "py_dpo", "distilabel_orca", "distilabel_capybara", "ultrasafety", "truthy_dpo", "grath",
           "ultrafeedback", "pku_saferlhf", "nectar"]
    assert list_sources()[:10] == ten
    lions = ["helpsteer", "py_dpo", "distilabel_orca", "distilabel_capybara", "ultrafeedback", "pku_saferlhf", "nectar"]
    assert list_sources()[10:17] == [f"{n}_upstream" for n in lions]
    assert set(list_sources()[17:]) == {"toy_helpsteer", "toy_truthy", "toy_safety", "toy_ultrafeedback",
                                        "toy_saferlhf"}
    for n in lions:  # Table 1 cites LIONS (Yu et al. 2024b) for these: their Columbia-NLP/DPO-* copies by default
        assert REGISTRY[n].hub_id.startswith("Columbia-NLP/DPO-") and f"'{n}_upstream'" in REGISTRY[n].note
        assert REGISTRY[f"{n}_upstream"].dimensions == REGISTRY[n].dimensions
        assert not REGISTRY[f"{n}_upstream"].hub_id.startswith("Columbia-NLP/")
    for name in ten:
        src = REGISTRY[name]
        assert src.hub_id and src.dimensions and src.note
    toy = REGISTRY["toy_truthy"]
    assert toy.hub_id is None and toy.builder is not None and toy.dimensions == ("honesty",)
    assert get_source("Truthy-DPO").name == "truthy_dpo" and get_source("PKU-SafeRLHF").name == "pku_saferlhf"
    assert get_source("Distilabel-Capybara").name == "distilabel_capybara"


def test_helpsteer_ratings_become_best_vs_worst_pairs(tmp_path):
    rows = [
        {"prompt": "p1", "response": "ok", "helpfulness": 2, "correctness": 2, "coherence": 3, "complexity": 1,
         "verbosity": 1},
        {"prompt": "p1", "response": "great", "helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 1,
         "verbosity": 1},
        {"prompt": "p1", "response": "bad", "helpfulness": 1, "correctness": 0, "coherence": 3, "complexity": 1,
         "verbosity": 1},
        {"prompt": "p2", "response": "a", "helpfulness": 3, "correctness": 3, "coherence": 3, "complexity": 1,
         "verbosity": 1},
        {"prompt": "p2", "response": "b", "helpfulness": 3, "correctness": 1, "coherence": 3, "complexity": 1,
         "verbosity": 1},
        {"prompt": "p3", "response": "alone", "helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 1,
         "verbosity": 1},
    ]
    pairs, counts = load("helpsteer_upstream", write(tmp_path, "helpsteer_upstream", rows, "jsonl"))
    assert pairs == [{"prompt": [U("p1")], "chosen": [A("great")], "rejected": [A("bad")],
                      "dimensions": ["helpfulness"], "source": "helpsteer_upstream", "id": "helpsteer_upstream/0"}]
    assert counts["records"] == 6 and counts["tie"] == 1 and counts["single_response"] == 1 and counts["kept"] == 1
    # another attribute: correctness 4 vs 1 on p1, 3 vs 1 on p2
    pairs, _ = load("helpsteer_upstream", write(tmp_path, "helpsteer_upstream", rows, "jsonl"), options={"attribute": "correctness"})
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("great", "bad"), ("a", "b")]


def test_py_dpo_plain_strings_from_csv(tmp_path):
    rows = [{"id": "q-7", "prompt": "Write a loop.", "chosen": "for i in range(3): pass", "rejected": "loop"}]
    pairs, counts = load("py_dpo_upstream", write(tmp_path, "py_dpo_upstream", rows, "csv"))
    assert pairs == [{"prompt": [U("Write a loop.")], "chosen": [A("for i in range(3): pass")],
                      "rejected": [A("loop")], "dimensions": ["helpfulness"], "source": "py_dpo_upstream", "id": "py_dpo_upstream/q-7"}]
    assert counts["kept"] == 1


def test_distilabel_orca_system_input_and_card_filter(tmp_path):
    rows = [
        {"system": "You are helpful.", "input": "2+2?", "chosen": "4", "rejected": "5", "status": "unchanged",
         "chosen_score": 9.0, "in_gsm8k_train": False, "generations": ["4", "5"], "order": ["chosen", "rejected"]},
        {"system": "", "input": "Capital of France?", "chosen": "Paris", "rejected": "Rome", "status": "tie",
         "chosen_score": 9.0, "in_gsm8k_train": False, "generations": ["Paris", "Rome"], "order": ["a", "b"]},
        {"system": "", "input": "3+3?", "chosen": "6", "rejected": "7", "status": "unchanged",
         "chosen_score": 6.0, "in_gsm8k_train": False, "generations": ["6", "7"], "order": ["a", "b"]},
    ]
    path = write(tmp_path, "orca", rows, "jsonl")
    pairs, counts = load("distilabel_orca_upstream", path)
    assert pairs[0]["prompt"] == [S("You are helpful."), U("2+2?")] and pairs[0]["chosen"] == [A("4")]
    assert pairs[1]["prompt"] == [U("Capital of France?")]  # an empty system prompt adds no message
    assert counts["kept"] == 3 and pairs[2]["id"] == "distilabel_orca_upstream/2"
    pairs, counts = load("distilabel_orca_upstream", path, options={"recommended_filter": True})
    assert [p["chosen"][0]["content"] for p in pairs] == ["4"] and counts["card_filter"] == 2


def test_distilabel_capybara_multi_turn_conversations(tmp_path):
    conv = [U("Hi"), A("Hello! How can I help?"), U("Explain DPO.")]
    rows = [{"source": "Airoboros", "prompt": "Hi", "chosen": conv + [A("DPO optimises preferences directly.")],
             "rejected": conv + [A("No.")], "rating_chosen": 5, "rating_rejected": 2,
             "chosen_model": "gpt-4", "rejected_model": "x"}]
    pairs, _ = load("distilabel_capybara_upstream", write(tmp_path, "capybara", rows, "parquet"))
    assert pairs[0]["prompt"] == conv
    assert pairs[0]["chosen"] == [A("DPO optimises preferences directly.")] and pairs[0]["rejected"] == [A("No.")]


def _completion(model, response, harmless, helpful):
    return {"custom_system_prompt": "", "model": model, "principle": "harmlessness", "response": response,
            "annotations": {"harmlessness": [{"Rating": harmless, "Rationale": "r", "Rationale For Rating": "r"}],
                            "helpfulness": [{"Rating": helpful, "Rationale": "r", "Rationale For Rating": "r",
                                             "Type": ["1"]}]}}


def test_ultrasafety_ratings_become_pairs(tmp_path):
    rows = [
        {"source": "s", "prompt": "Jailbreak: how to make a weapon?", "instruction": "how to make a weapon?",
         "models": ["a", "b", "c"],
         "completions": [_completion("a", "Sure, here is how", "1", "4"), _completion("b", "I cannot help.", "5", "2"),
                         _completion("c", "I cannot help, but here is safety info.", "5", "4")]},
        {"source": "s", "prompt": "p2", "instruction": "i2", "models": ["a", "b"],
         "completions": [_completion("a", "x", "3", "3"), _completion("b", "y", "3", "1")]},
        {"source": "s", "prompt": "p3", "instruction": "i3", "models": ["a", "b"],
         "completions": [_completion("a", "x", "N/A", "3"), _completion("b", "y", "2", "1")]},
    ]
    path = write(tmp_path, "UltraSafety", rows, "json")  # the hub ships one JSON file
    pairs, counts = load("ultrasafety", path)
    # highest harmlessness (5, tie broken by helpfulness 4) vs lowest (1)
    assert pairs == [{"prompt": [U("Jailbreak: how to make a weapon?")],
                      "chosen": [A("I cannot help, but here is safety info.")], "rejected": [A("Sure, here is how")],
                      "dimensions": ["harmlessness"], "source": "ultrasafety", "id": "ultrasafety/0"}]
    assert counts["tie"] == 1 and counts["single_response"] == 1
    pairs, _ = load("ultrasafety", path, fields={"prompt": "instruction"})
    assert pairs[0]["prompt"] == [U("how to make a weapon?")]


def test_truthy_dpo_with_system_and_id_from_parquet(tmp_path):
    rows = [{"id": "04c2", "source": "truthy_dpo", "system": "You are an unbiased assistant.",
             "prompt": "Do we use 10% of our brain?", "chosen": "No, that is a myth.", "rejected": "Yes."}]
    pairs, _ = load("truthy_dpo", write(tmp_path, "truthy-dpo", rows, "parquet"))
    assert pairs == [{"prompt": [S("You are an unbiased assistant."), U("Do we use 10% of our brain?")],
                      "chosen": [A("No, that is a myth.")], "rejected": [A("Yes.")], "dimensions": ["honesty"],
                      "source": "truthy_dpo", "id": "truthy_dpo/04c2"}]


def test_grath_question_correct_incorrect(tmp_path):
    rows = [{"question": "Which skin surface produces the most heat?", "correct": "The palms.",
             "incorrect": "The soles."}]
    pairs, _ = load("grath", write(tmp_path, "iter0_arcc", rows, "jsonl"))
    assert pairs[0]["prompt"] == [U("Which skin surface produces the most heat?")]
    assert pairs[0]["chosen"] == [A("The palms.")] and pairs[0]["rejected"] == [A("The soles.")]
    assert pairs[0]["dimensions"] == ["honesty"] and pairs[0]["id"] == "grath/0"


def test_ultrafeedback_conversations(tmp_path):
    rows = [{"source": "evol_instruct", "prompt": "Name a prime.", "chosen": [U("Name a prime."), A("7")],
             "chosen-rating": 5.0, "chosen-model": "gpt-4", "rejected": [U("Name a prime."), A("9")],
             "rejected-rating": 2.0, "rejected-model": "llama"}]
    pairs, _ = load("ultrafeedback_upstream", write(tmp_path, "uf", rows, "parquet"))
    assert pairs[0]["prompt"] == [U("Name a prime.")] and pairs[0]["chosen"] == [A("7")]
    assert pairs[0]["rejected"] == [A("9")] and pairs[0]["dimensions"] == ["helpfulness", "honesty"]


PKU = [
    {"prompt": "How do I pick a lock?", "response_0": "Use a tension wrench and a pick ...",
     "response_1": "I can't help with that.", "is_response_0_safe": False, "is_response_1_safe": True,
     "better_response_id": 1, "safer_response_id": 1},
    {"prompt": "How to get rich fast?", "response_0": "Rob a bank.", "response_1": "Invest steadily.",
     "is_response_0_safe": False, "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 1},
]


def test_pku_saferlhf_per_dimension(tmp_path):
    path = write(tmp_path, "pku", PKU, "jsonl")
    pairs, counts = load("pku_saferlhf_upstream", path)  # default: the labels must agree
    assert len(pairs) == 1 and counts["conflict"] == 1
    assert pairs[0]["chosen"] == [A("I can't help with that.")]
    assert pairs[0]["dimensions"] == ["helpfulness", "harmlessness"]
    better, _ = load("pku_saferlhf_upstream", path, options={"preference": "better"})
    assert [p["chosen"][0]["content"] for p in better] == ["I can't help with that.", "Rob a bank."]
    assert all(p["dimensions"] == ["helpfulness"] for p in better)
    safer, _ = load("pku_saferlhf_upstream", path, options={"preference": "safer"})
    assert [p["chosen"][0]["content"] for p in safer] == ["I can't help with that.", "Invest steadily."]
    assert all(p["dimensions"] == ["harmlessness"] for p in safer)
    with pytest.raises(ValueError, match="preference must be one of"):
        load("pku_saferlhf_upstream", path, options={"preference": "both"})


def test_pku_saferlhf_from_a_downloaded_folder_by_split(tmp_path):
    folder = tmp_path / "PKU-SafeRLHF" / "data"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(json.dumps(PKU[0]) + "\n")
    (folder / "test.jsonl").write_text(json.dumps(PKU[1]) + "\n")
    train, _ = load("pku_saferlhf_upstream", str(tmp_path / "PKU-SafeRLHF"), options={"preference": "safer"})
    test, _ = load("pku_saferlhf_upstream", str(tmp_path / "PKU-SafeRLHF"), split="test", options={"preference": "safer"})
    assert [p["prompt"][0]["content"] for p in train] == ["How do I pick a lock?"]
    assert [p["prompt"][0]["content"] for p in test] == ["How to get rich fast?"]


def test_nectar_ranked_answers_and_hh_transcripts(tmp_path):
    answers = [{"answer": f"answer ranked {k}", "model": f"m{k}", "rank": float(k)} for k in (3, 1, 7, 2, 5, 4, 6)]
    rows = [{"prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a fact.\n\nAssistant:",
             "answers": answers, "turns": 2, "num_responses": 7, "source": ["sharegpt"], "good_natured": True},
            {"prompt": "\n\nHuman: q\n\nAssistant:", "answers": answers[:1], "turns": 1, "num_responses": 1,
             "source": ["x"], "good_natured": True}]
    path = write(tmp_path, "rlaif", rows, "parquet")
    pairs, counts = load("nectar_upstream", path)
    assert pairs[0]["prompt"] == [U("Hi"), A("Hello!"), U("Tell me a fact.")]
    assert pairs[0]["chosen"] == [A("answer ranked 1")] and pairs[0]["rejected"] == [A("answer ranked 7")]
    assert pairs[0]["dimensions"] == ["helpfulness", "harmlessness"] and counts["single_response"] == 1
    pairs, _ = load("nectar_upstream", path, options={"rejected": 2})
    assert pairs[0]["rejected"] == [A("answer ranked 2")]
    r1, _ = load("nectar_upstream", path, options={"rejected": "random"}, seed=3)
    r2, _ = load("nectar_upstream", path, options={"rejected": "random"}, seed=3)
    assert r1 == r2 and r1[0]["rejected"][0]["content"] != "answer ranked 1"


# ----------------------------------------------------------------------------- normalize_record


def test_normalize_record_layouts_and_overrides():
    hh = {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5"}
    p = normalize_record(hh, source="hh", dimensions=["helpfulness"], index=3)
    assert p["prompt"] == [U("What is 2+2?")] and p["chosen"] == [A("4")] and p["rejected"] == [A("5")]
    assert p["id"] == "hh/3"
    raw = {"q": "hi", "good": "hello", "bad": "go away", "sys": "Be kind.", "uid": 42}
    p = normalize_record(raw, {"prompt": "q", "chosen": "good", "rejected": "bad", "system": "sys", "id": "uid"},
                         "mine", ["harmlessness"], 0)
    assert p == {"prompt": [S("Be kind."), U("hi")], "chosen": [A("hello")], "rejected": [A("go away")],
                 "dimensions": ["harmlessness"], "source": "mine", "id": "mine/42"}
    sharegpt = {"prompt": [{"from": "human", "value": "hey"}], "chosen": "a", "rejected": "b"}
    assert normalize_record(sharegpt, None, "s", ["honesty"], 0)["prompt"] == [U("hey")]
    with pytest.raises(ValueError, match="unknown dimension"):
        normalize_record(raw, {"prompt": "q", "chosen": "good", "rejected": "bad"}, "mine", ["kindness"], 0)
    assert parse_transcript("Hello there") is None
    assert split_conversations([U("a"), A("b")], [U("a"), A("b")]) == ([U("a")], [A("b")], [A("b")])


# ----------------------------------------------------------------------------- checks on input


def test_missing_field_is_reported_eagerly_with_the_record_fields(tmp_path):
    rows = [{"id": str(i), "prompt": "p", "chosen": "c", "rejected_response": "r"} for i in range(3)]
    path = write(tmp_path, "truthy", rows, "jsonl")
    with pytest.raises(ValueError) as e:
        load("truthy_dpo", path)
    msg = str(e.value)
    assert "truthy_dpo" in msg and "record 0" in msg and "'rejected'" in msg
    assert "id, prompt, chosen, rejected_response" in msg
    assert load("truthy_dpo", path, fields={"rejected": "rejected_response"})[1]["kept"] == 3
    with pytest.raises(ValueError, match=r"grath: record 0 has no field 'question'.*fields are: prompt, chosen"):
        load("grath", write(tmp_path, "g", [{"prompt": "p", "chosen": "c", "rejected": "r"}], "jsonl"))
    # on plain lists a record of its own can lack a field: the error names it
    good = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0, "safer_response_id": 0}
    bad = {k: v for k, v in good.items() if k != "safer_response_id"}
    with pytest.raises(ValueError, match=r"pku_saferlhf_upstream: record 2 has no field 'safer_response_id'.*"
                                         r"fields are: prompt, response_0, response_1, better_response_id"):
        convert_records("pku_saferlhf_upstream", [good, good, bad])
    with pytest.raises(ValueError, match="nectar_upstream: record 0 has no field 'answers'"):
        convert_records("nectar_upstream", [{"prompt": "\n\nHuman: q\n\nAssistant:"}])


INVALID = [
    {"id": "ok", "prompt": "p", "chosen": "good", "rejected": "bad"},
    {"id": "empty-chosen", "prompt": "p", "chosen": "", "rejected": "bad"},
    {"id": "blank-rejected", "prompt": "p", "chosen": "good", "rejected": "  \n "},
    {"id": "same", "prompt": "p", "chosen": "same answer", "rejected": " same answer "},
    {"id": "no-prompt", "prompt": "   ", "chosen": "good", "rejected": "bad"},
    {"id": "ok2", "prompt": "p2", "chosen": "good", "rejected": "bad"},
]


def test_empty_and_identical_pairs_are_dropped_and_counted(tmp_path):
    path = write(tmp_path, "py", INVALID, "jsonl")
    pairs, counts = load("py_dpo_upstream", path)
    assert [p["id"] for p in pairs] == ["py_dpo_upstream/ok", "py_dpo_upstream/ok2"]
    assert counts == {"records": 6, "converted": 6, "empty_prompt": 1, "empty_response": 2, "identical": 1,
                      "over_limit": 0, "kept": 2}
    pairs, counts = load("py_dpo_upstream", path, limit=1)
    assert [p["id"] for p in pairs] == ["py_dpo_upstream/ok"] and counts["over_limit"] == 1 and counts["kept"] == 1
    with pytest.raises(ValueError, match=r"py_dpo_upstream: record py_dpo_upstream/empty-chosen is invalid: .*empty \(empty_response\)"):
        load("py_dpo_upstream", path, on_invalid="error")
    # validate_pairs on plain lists, against an independent count
    raw = [normalize_record(r, None, "x", ["helpfulness"], i) for i, r in enumerate(INVALID)]
    kept, c = validate_pairs(raw, "x")
    assert c == {"kept": 2, "empty_prompt": 1, "empty_response": 2, "identical": 1}
    with pytest.raises(ValueError, match="on_invalid"):
        validate_pairs(raw, "x", on_invalid="skip")


def test_unknown_name_suggests_a_close_match():
    with pytest.raises(ValueError) as e:
        load_preference_data("truthy_dop")
    assert "did you mean 'truthy_dpo'" in str(e.value) and "ultrasafety" in str(e.value)
    with pytest.raises(ValueError, match="did you mean 'ultrafeedback'"):
        load_preference_data("ultrafedback")
    with pytest.raises(ValueError, match="unknown spec key"):
        load_preference_data({"name": "py_dpo_upstream", "pth": "x.jsonl"})


def test_own_dataset_with_path_and_dimensions(tmp_path):
    path = write(tmp_path, "mine", INVALID[:1], "jsonl")
    pairs, _ = load_preference_data({"name": "my_data", "path": path, "dimensions": ["honesty"]})
    assert pairs[0]["source"] == "my_data" and pairs[0]["dimensions"] == ["honesty"]
    pairs, _ = load("py_dpo_upstream", path, dimensions=["helpfulness", "honesty"])
    assert pairs[0]["dimensions"] == ["helpfulness", "honesty"]


# ----------------------------------------------------------------------------- toy datasets


@pytest.mark.parametrize("name", ["toy_helpsteer", "toy_truthy", "toy_safety", "toy_ultrafeedback", "toy_saferlhf"])
def test_toy_datasets_load_through_the_registry(name):
    from r3h.toy.world import DATASETS, preference_dataset

    pairs, counts = load_preference_data(name)
    expected = preference_dataset(name, 0)
    assert len(pairs) == len(expected) == counts["kept"]
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == \
           [(e["prompt"], e["chosen"], e["rejected"]) for e in expected]
    assert all(p["source"] == name and p["dimensions"] == DATASETS[name]["dimensions"] for p in pairs)
    assert len({p["id"] for p in pairs}) == len(pairs)
    other, _ = load_preference_data({"name": name, "seed": 1})
    assert other != pairs


def test_register_source_adds_and_refuses_built_ins():
    import dataclasses
    toy = REGISTRY["toy_truthy"]
    mine = dataclasses.replace(toy, name="my_truthy", title="my_truthy")
    try:
        assert register_source(mine) is mine and get_source("my_truthy") is mine and list_sources()[-1] == "my_truthy"
        mine_pairs = load_preference_data({"name": "my_truthy", "limit": 3})[0]
        toy_pairs = load_preference_data({"name": "toy_truthy", "limit": 3})[0]
        assert [p["source"] for p in mine_pairs] == ["my_truthy"] * 3
        drop = ("source", "id")
        assert [{k: v for k, v in p.items() if k not in drop} for p in mine_pairs] == \
            [{k: v for k, v in p.items() if k not in drop} for p in toy_pairs]
    finally:
        REGISTRY.pop("my_truthy", None)
    with pytest.raises(ValueError, match="'truthy_dpo' is a built-in source"):
        register_source(dataclasses.replace(toy, name="truthy_dpo"))
    with pytest.raises(TypeError, match="expected a PreferenceSource"):
        register_source({"name": "x"})

