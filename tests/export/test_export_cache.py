"""neuron-export through the compile cache: warm exports compile nothing and still validate."""

from __future__ import annotations

import pytest
import torch
import transformers

from neuron_cache.store import CompileCache
from neuron_export.export import ExportOptions, export
from neuron_infer import NeuronModelForCausalLM

CONFIG = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64)


def checkpoint(path, seed: int):
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(path)
    return path, model


GRAPHS = 5  # context buckets 8 and 16, token generation over both slots and over one (decode_batches [1]), chunk 16


def run(model_dir, out, cache_url, **extra):
    options = dict(model=str(model_dir), output=str(out), batch_size=2, sequence_length=32, max_context_length=16,
                   context_buckets=[8, 16], chunk_buckets=[16], backend="torch-export", cache_url=str(cache_url))
    options.update(extra)
    return export(ExportOptions(**options), log=lambda _m: None)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "compile-cache"


def test_second_export_compiles_nothing(tmp_path, cache_dir):
    ckpt, _ = checkpoint(tmp_path / "a", seed=0)
    first = run(ckpt, tmp_path / "out1", cache_dir)
    second = run(ckpt, tmp_path / "out2", cache_dir)
    assert first.cache_stats["compiles"] == GRAPHS and first.cache_stats["hits"] == 0
    assert second.cache_stats["compiles"] == 0 and second.cache_stats["hits"] == GRAPHS
    # the cached graph files are byte-identical to the first export's
    for name, graph in first.config.graphs.items():
        assert graph.sha256 == second.config.graphs[name].sha256


def test_other_checkpoint_of_same_architecture_hits_and_still_validates(tmp_path, cache_dir):
    ckpt_a, _ = checkpoint(tmp_path / "a", seed=0)
    ckpt_b, model_b = checkpoint(tmp_path / "b", seed=1)
    run(ckpt_a, tmp_path / "out-a", cache_dir)
    result = run(ckpt_b, tmp_path / "out-b", cache_dir)
    assert result.cache_stats["compiles"] == 0 and result.cache_stats["hits"] == GRAPHS
    assert result.validation_max_diff is not None and result.validation_max_diff < 1e-3
    # the artifact runs checkpoint b's weights, not the ones the cached graphs were traced with
    prompt = torch.tensor([[1, 5, 9, 33, 2, 71]])
    ours = NeuronModelForCausalLM.from_pretrained(tmp_path / "out-b").generate(prompt, max_new_tokens=10,
                                                                              eos_token_id=None)
    ref = model_b.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, ref)


def test_a_different_bucket_set_reuses_the_shared_buckets(tmp_path, cache_dir):
    ckpt, _ = checkpoint(tmp_path / "a", seed=0)
    run(ckpt, tmp_path / "out1", cache_dir)
    result = run(ckpt, tmp_path / "out2", cache_dir, context_buckets=[4, 16])
    # bucket 4 is new; bucket 16, both token-generation graphs and the chunk graph come from the cache
    assert (result.cache_stats["compiles"], result.cache_stats["hits"]) == (1, GRAPHS - 1)


def test_disable_neuron_cache_compiles_every_time(tmp_path, cache_dir):
    ckpt, _ = checkpoint(tmp_path / "a", seed=0)
    run(ckpt, tmp_path / "out1", cache_dir)
    result = run(ckpt, tmp_path / "out2", cache_dir, disable_neuron_cache=True)
    assert result.cache_stats["compiles"] == GRAPHS
    assert CompileCache.from_env(str(cache_dir)).stats.hits == 0


def test_lookup_lists_what_was_exported(tmp_path, cache_dir):
    ckpt, _ = checkpoint(tmp_path / "a", seed=0)
    run(ckpt, tmp_path / "out1", cache_dir)
    run(ckpt, tmp_path / "out2", cache_dir, batch_size=1)
    found = CompileCache.from_env(str(cache_dir)).lookup(str(ckpt))
    assert sorted(entry["batch_size"] for entry in found) == [1, 2]
    assert all(entry["sequence_length"] == 32 for entry in found)
    assert CompileCache.from_env(str(cache_dir)).lookup(str(ckpt), batch_size=1)[0]["batch_size"] == 1


def test_offline_export_with_a_warm_store(tmp_path, cache_dir, monkeypatch):
    ckpt, _ = checkpoint(tmp_path / "a", seed=0)
    run(ckpt, tmp_path / "out1", cache_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run(ckpt, tmp_path / "out2", cache_dir)
    assert result.cache_stats["hits"] == GRAPHS


def test_graph_code_digest_follows_the_graph_building_source(tmp_path):
    # Part of every cache key: editing the model or backend code must never reuse a graph it built.
    import shutil
    from pathlib import Path

    import neuron_export
    from neuron_export.export import GRAPH_CODE_DIRS, graph_code_digest

    src = Path(neuron_export.__file__).parent
    copy = tmp_path / "neuron_export"
    for sub in GRAPH_CODE_DIRS:
        shutil.copytree(src / sub, copy / sub)
    before = graph_code_digest(copy)
    assert before == graph_code_digest(src)
    edited = tmp_path / "edited"
    shutil.copytree(copy, edited)
    kernels = edited / "backends" / "cpu_kernels.py"  # kernel choices live with the backend, and count too
    kernels.write_text(kernels.read_text() + "\n# an edit\n")
    assert graph_code_digest(edited) != before
