"""`MergeAlgorithm.run` over several Fabric ranks, for any method that declares `distributed`.

Two ranks run as two threads that share a barrier (the part of Lightning's Fabric that the
run uses: rank, world size, barrier, broadcast). Each merges its share of the tensors; the
output (a model, several models, or a folder) must be the one-process output bit for bit,
and an error on one rank must stop both and leave nothing behind.
"""

from __future__ import annotations

import os
import threading

import pytest
import torch

from r3h.core.distributed import assign_tensors
from r3h.methods import RewardedSoup, TaskArithmetic
from tests.conftest import read_folder


class ThreadFabric:
    """Rank `rank` of `world` ranks run as threads of one process."""

    def __init__(self, rank: int, world: int, shared: dict):
        self.global_rank, self.world_size, self._shared = rank, world, shared

    def barrier(self):
        self._shared["barrier"].wait(timeout=120)

    def broadcast(self, obj, src=0):
        if self.global_rank == src:
            self._shared["value"] = obj
        self.barrier()
        value = self._shared["value"]
        self.barrier()
        return value


def on_ranks(make, pool, world=2):
    """Build a method per rank with `make()`, run them as `world` ranks; per rank: its return
    value or the exception it raised, and the method."""
    shared = {"barrier": threading.Barrier(world)}
    methods = [make() for _ in range(world)]
    results = [None] * world

    def rank_main(r):
        methods[r].fabric = ThreadFabric(r, world, shared)
        try:
            results[r] = methods[r].run(pool)
        except Exception as exc:
            results[r] = exc

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results, methods


class SpreadTaskArithmetic(TaskArithmetic):
    distributed = True


class SpreadSoup(RewardedSoup):
    distributed = True


class FailingOnOneTensor(SpreadTaskArithmetic):
    def merge_tensor(self, name, base, experts):
        if name == "model.norm.weight":
            raise ValueError(f"tensor '{name}': refused")
        return super().merge_tensor(name, base, experts)


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def pool(pool_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    base = {k: v.detach().clone() for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(1)
    experts = {f"e{i}": {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
               for i in range(3)}
    return pool_factory(base, experts, cfg.to_dict())


def test_two_ranks_give_the_one_process_model(pool):
    one = SpreadTaskArithmetic(progress=False, scaling_factor=0.7).run(pool)  # no fabric: one process
    results, methods = on_ranks(lambda: SpreadTaskArithmetic(progress=False, scaling_factor=0.7), pool)
    assert results[1] is None and not isinstance(results[0], Exception)
    a, b = state_of(one), state_of(results[0])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for m in methods:  # both ranks hold the run's report
        assert m.last_report["stats"]["world_size"] == 2
        assert m.last_report["stats"]["tensors"] == len(a)
    shares = assign_tensors(methods[0].prepare(pool), 2)
    assert all(shares) and sorted(shares[0] + shares[1]) == sorted(a)


def test_two_ranks_write_the_one_process_folder(pool, tmp_path):
    SpreadTaskArithmetic(progress=False, out_dir=str(tmp_path / "one"), max_shard_size="20KB").run(pool)
    out = tmp_path / "two"
    results, _ = on_ranks(lambda: SpreadTaskArithmetic(progress=False, out_dir=str(out), max_shard_size="20KB"),
                          pool)
    assert results == [None, None]
    a, b = read_folder(tmp_path / "one"), read_folder(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    files = sorted(os.listdir(out))
    assert {"config.json", "r3h_merge.json", "README.md", "model.safetensors.index.json"} <= set(files)
    assert not [f for f in files if f.startswith(".")]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no staging folder left


def test_two_ranks_write_several_models(pool, tmp_path):
    prefs = [[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]]
    sweep = SpreadSoup(progress=False, preference=prefs).run(pool)
    out = tmp_path / "soup"
    results, _ = on_ranks(lambda: SpreadSoup(progress=False, preference=prefs, out_dir=str(out)), pool)
    assert results == [None, None]
    assert sorted(os.listdir(out)) == ["preference_00", "preference_01", "sweep.json"]
    for name, model in sweep.items():
        a, b = state_of(model), read_folder(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results, _ = on_ranks(lambda: SpreadSoup(progress=False, preference=prefs), pool)
    assert results[1] is None and list(results[0]) == ["preference_00", "preference_01"]
    for name, model in sweep.items():
        a, b = state_of(model), state_of(results[0][name])
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_error_on_one_rank_stops_both(pool, tmp_path):
    out = tmp_path / "never"
    results, _ = on_ranks(lambda: FailingOnOneTensor(progress=False, out_dir=str(out)), pool)
    for r, exc in enumerate(results):
        assert isinstance(exc, ValueError), (r, exc)
        assert "tensor 'model.norm.weight': refused (on rank" in str(exc)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".r3h-merge-")]
