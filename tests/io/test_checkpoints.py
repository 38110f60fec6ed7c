"""The authors' checkpoints (issue 11, item 5): a `Jinluan/3H_Merging_*` repository also
resolves under `yangjinluan` (and back), a revision reaches the download, and the error
names both repositories when neither resolves. Offline: the hub download is replaced by a
fake that serves local folders."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

import r3h.io.checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def tiny(tmp_path):
    from r3h.toy.build import build_tiny_3h

    return build_tiny_3h(os.environ["R3H_CACHE"], ["helpfulness", "honesty"])


@pytest.fixture()
def fake_hub(monkeypatch):
    """A hub that holds `repos` (repo id -> local folder); every call is recorded."""
    repos, calls = {}, []

    def download(repo_id, revision=None):
        calls.append((repo_id, revision))
        if repo_id not in repos:
            raise OSError(f"404 Client Error: Repository Not Found for url: https://huggingface.co/{repo_id}")
        return repos[repo_id]

    monkeypatch.setattr(ckpt, "download_snapshot", download)
    return repos, calls


def test_candidates_of_the_renamed_account():
    assert ckpt.hub_candidates("Jinluan/3H_Merging_Mistral_Honesty") == [
        "Jinluan/3H_Merging_Mistral_Honesty", "yangjinluan/3H_Merging_Mistral_Honesty"]
    assert ckpt.hub_candidates("yangjinluan/3H_Merging_Llama3_Helpfulness") == [
        "yangjinluan/3H_Merging_Llama3_Helpfulness", "Jinluan/3H_Merging_Llama3_Helpfulness"]
    assert ckpt.hub_candidates("meta-llama/Meta-Llama-3-8B-Instruct") == ["meta-llama/Meta-Llama-3-8B-Instruct"]


@pytest.mark.slow
@pytest.mark.parametrize("asked,served", [("Jinluan/3H_Merging_Mistral_Honesty", "yangjinluan/3H_Merging_Mistral_Honesty"),
                                          ("yangjinluan/3H_Merging_Mistral_Honesty", "Jinluan/3H_Merging_Mistral_Honesty"),
                                          ("Jinluan/3H_Merging_Mistral_Honesty", "Jinluan/3H_Merging_Mistral_Honesty")])
def test_either_name_resolves(fake_hub, tiny, asked, served):
    repos, calls = fake_hub
    repos[served] = tiny["honesty"]
    c = ckpt.Checkpoint(asked, "honesty")
    assert c.path == tiny["honesty"] and c.keys()
    assert calls[-1] == (served, None)
    assert calls[0][0] == asked  # the configured name first


def test_neither_name_resolves_names_both(fake_hub):
    with pytest.raises(FileNotFoundError) as e:
        ckpt.Checkpoint("Jinluan/3H_Merging_Llama3_Honesty", "honesty")
    msg = str(e.value)
    assert "'honesty'" in msg and "'Jinluan/3H_Merging_Llama3_Honesty'" in msg
    assert "'yangjinluan/3H_Merging_Llama3_Honesty'" in msg and "Repository Not Found" in msg


def test_an_unrelated_repo_keeps_the_plain_error(fake_hub):
    repos, calls = fake_hub
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a downloadable hub repository"):
        ckpt.Checkpoint("meta-llama/Meta-Llama-3-8B-Instruct", "_pretrained_")
    assert [c[0] for c in calls] == ["meta-llama/Meta-Llama-3-8B-Instruct"]


@pytest.mark.slow
def test_pool_loads_and_merges_from_either_name(fake_hub, tiny):
    """The Llama-3 pool's names, served under the new account only: the pool loads a model
    and a merge runs, with the revision of a `_target_` entry passed to the download."""
    import torch

    from r3h.methods import TaskArithmetic
    from r3h.modelpool import AlignedCausalLMPool

    repos, calls = fake_hub
    repos["yangjinluan/3H_Merging_Llama3_Helpfulness"] = tiny["helpfulness"]
    repos["yangjinluan/3H_Merging_Llama3_Honesty"] = tiny["honesty"]
    sha = "0123456789abcdef0123456789abcdef01234567"
    pool = AlignedCausalLMPool({
        "_pretrained_": tiny["_pretrained_"],
        "helpfulness": "Jinluan/3H_Merging_Llama3_Helpfulness",
        "honesty": {"_target_": "transformers.AutoModelForCausalLM.from_pretrained",
                    "pretrained_model_name_or_path": "Jinluan/3H_Merging_Llama3_Honesty", "revision": sha},
    }, tokenizer=tiny["_pretrained_"])
    model = pool.load_model("helpfulness")
    want = AlignedCausalLMPool({"_pretrained_": tiny["helpfulness"]}, tokenizer=None).load_model("_pretrained_")
    for (k, a), (_, b) in zip(model.state_dict().items(), want.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    calls.clear()
    merged = TaskArithmetic(scaling_factor=0.5, progress=False).run(pool)
    assert ("yangjinluan/3H_Merging_Llama3_Honesty", sha) in calls
    assert ("Jinluan/3H_Merging_Llama3_Honesty", sha) in calls
    local = AlignedCausalLMPool({"_pretrained_": tiny["_pretrained_"], "helpfulness": tiny["helpfulness"],
                                 "honesty": tiny["honesty"]}, tokenizer=None)
    ref = TaskArithmetic(scaling_factor=0.5, progress=False).run(local)
    for (k, a), (_, b) in zip(merged.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("family", ["llama3_3h", "mistral_3h"])
def test_paper_pools_name_the_authors_repositories(family):
    cfg = OmegaConf.load(os.path.join(REPO, "config", "modelpool", f"{family}.yaml"))
    experts = {k: v for k, v in cfg.models.items() if k != "_pretrained_"}
    assert set(experts) == {"helpfulness", "honesty", "harmlessness", "helpfulness_honesty",
                            "helpfulness_harmlessness"}
    for name, repo in experts.items():
        repo = repo if isinstance(repo, str) else repo["pretrained_model_name_or_path"]
        assert repo.split("/")[1].startswith("3H_Merging_")
        assert len(ckpt.hub_candidates(repo)) == 2
