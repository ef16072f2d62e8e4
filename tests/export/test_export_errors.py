"""The neuron-export CLI on bad input (clear message, exit code 1, no traceback) and on good input
(the artifact carries the checkpoint's tokenizer and configs, and opens with neuron_cache)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from export_testlib import BUCKETS, SEQUENCE_LENGTH

from neuron_cache import Artifact, ArtifactError, NeuronConfig
from neuron_export.cli import main
from neuron_export.models import supported_model_types

SHAPES = ["--sequence_length", str(SEQUENCE_LENGTH), "--max_context_length", str(BUCKETS[-1]),
          "--context_buckets", ",".join(map(str, BUCKETS))]


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_fails_with(result: Result, *fragments: str) -> str:
    """Exit code 1 through the CLI's error path (no traceback), one line on stderr, every fragment in it."""
    assert result.exit_code == 1, f"exit code {result.exit_code}\n{result.output}"
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    message = result.stderr
    assert message.startswith("Error: ") and message.count("\n") == 1, f"not one 'Error:' line:\n{message}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the error message:\n{message}"
    return message


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- unsupported models -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("config_class", "model_type"), [
    ("GPT2Config", "gpt2"),  # architectures: GPT2LMHeadModel
    ("GPTNeoXConfig", "gpt_neox"),  # architectures: GPTNeoXForCausalLM
])
def test_unsupported_architecture_lists_supported_model_types(tmp_path: Path, config_class: str, model_type: str):
    import transformers

    sizes = dict(vocab_size=64, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1,
                 n_embd=32, n_head=2, n_layer=1, n_positions=64, max_position_embeddings=64)
    config = getattr(transformers, config_class)(**sizes)
    assert config.model_type == model_type
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "ckpt")
    message = assert_fails_with(run_cli("-m", str(tmp_path / "ckpt"), "--backend", "torch-export", *SHAPES,
                                        str(tmp_path / "out")), *supported_model_types())
    assert model_type in message.lower()  # names what it got: GPT2LMHeadModel / model_type 'gpt_neox'


def test_multimodal_gemma3_is_refused_with_its_fix(tmp_path: Path):
    """Gemma3ForConditionalGeneration (model_type gemma3): refused, pointing at its text decoder (gemma3_text)."""
    import transformers

    text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, max_position_embeddings=64)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    transformers.Gemma3ForConditionalGeneration(config).save_pretrained(tmp_path / "ckpt")
    assert_fails_with(run_cli("-m", str(tmp_path / "ckpt"), "--task", "text-generation", "--backend", "torch-export",
                              *SHAPES, str(tmp_path / "out")),
                      "model_type 'gemma3'", "model.language_model.", "gemma3_text", "Gemma3ForCausalLM")


# ---- impossible shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "fragments"), [
    (["--sequence_length", "48", "--max_context_length", "32", "--context_buckets", "16,40"],
     ["context_buckets", "40", "max_context_length (32)"]),
    (["--sequence_length", "48", "--max_context_length", "56"],
     ["max_context_length", "56", "sequence_length (48)"]),
    (["--sequence_length", "100", "--max_context_length", "32"],
     ["--sequence_length 100", "max_position_embeddings (64)"]),
    (["--sequence_length", "48", "--max_context_length", "32", "--context_buckets", "32,16"],
     ["context_buckets", "[32, 16]", "increasing"]),
])
def test_impossible_shapes_name_option_and_value(tiny_llama_dir: Path, tmp_path: Path, args, fragments):
    assert_fails_with(run_cli("-m", str(tiny_llama_dir), "--backend", "torch-export", *args, str(tmp_path / "out")),
                      *fragments)


# ---- broken checkpoints -----------------------------------------------------------------------------------


def test_no_weights_file(tiny_llama_dir: Path, tmp_path: Path):
    ckpt = copy_checkpoint(tiny_llama_dir, tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    assert_fails_with(run_cli("-m", str(ckpt), "--backend", "torch-export", *SHAPES, str(tmp_path / "out")),
                      "no *.safetensors weights", str(ckpt))


def test_missing_tensor_is_named(tiny_llama_dir: Path, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    ckpt = copy_checkpoint(tiny_llama_dir, tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    del state["model.layers.1.self_attn.k_proj.weight"]
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    assert_fails_with(run_cli("-m", str(ckpt), "--backend", "torch-export", *SHAPES, str(tmp_path / "out")),
                      "model.layers.1.self_attn.k_proj.weight", "lacks 1 tensor")


def test_wrongly_shaped_tensor_is_named(tiny_llama_dir: Path, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    ckpt = copy_checkpoint(tiny_llama_dir, tmp_path / "ckpt")
    state = load_file(ckpt / "model.safetensors")
    state["model.layers.0.mlp.down_proj.weight"] = state["model.layers.0.mlp.down_proj.weight"][:, :-1].contiguous()
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    assert_fails_with(run_cli("-m", str(ckpt), "--backend", "torch-export", *SHAPES, str(tmp_path / "out")),
                      "model.layers.0.mlp.down_proj.weight", "(72, 135)", "(72, 136)")


def test_truncated_weights_file_is_named(tiny_llama_dir: Path, tmp_path: Path):
    """A download cut short: the first half of a real checkpoint's model.safetensors."""
    ckpt = copy_checkpoint(tiny_llama_dir, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_fails_with(run_cli("-m", str(ckpt), "--backend", "torch-export", *SHAPES, str(tmp_path / "out")),
                      str(weights), "truncated or corrupted", "Re-download the checkpoint")
    assert not (tmp_path / "out").exists()


def test_config_that_is_not_json_is_named(tiny_llama_dir: Path, tmp_path: Path):
    ckpt = copy_checkpoint(tiny_llama_dir, tmp_path / "ckpt")
    (ckpt / "config.json").write_text('{"model_type": "llama", "hidden_size": 72,')
    assert_fails_with(run_cli("-m", str(ckpt), "--backend", "torch-export", *SHAPES, str(tmp_path / "out")),
                      str(ckpt / "config.json"), "not a valid JSON", "re-download")


def test_unreadable_gguf(tmp_path: Path):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"this is not a GGUF file\x00" * 64)
    assert_fails_with(run_cli("-m", str(gguf), "--backend", "torch-export", *SHAPES, str(tmp_path / "out")),
                      "GGUF", str(gguf))


def test_missing_local_directory(tmp_path: Path):
    assert_fails_with(run_cli("-m", str(tmp_path / "nowhere"), "--backend", "torch-export", str(tmp_path / "out")),
                      str(tmp_path / "nowhere"))


# ---- backends ---------------------------------------------------------------------------------------------


def test_neuron_backend_says_sdk_missing(tiny_llama_dir: Path, tmp_path: Path):
    assert_fails_with(run_cli("-m", str(tiny_llama_dir), "--backend", "neuron", *SHAPES, str(tmp_path / "out")),
                      "Neuron SDK", "not installed", "--backend torch-aot")


@pytest.mark.parametrize(("backend", "target", "fragments"), [
    ("torch-aot", "cuda", ["--target cuda", "no usable CUDA device", "Drop --target"]),
    ("torch-aot", "trn1", ["--target trn1", "Neuron device", "Drop --target", "--backend neuron", "Neuron SDK"]),
    ("torch-aot", "inf2", ["--target inf2", "Neuron device", "Drop --target", "--backend neuron"]),
    ("torch-aot", "trn2", ["--target trn2", "Neuron device", "Drop --target", "--backend neuron"]),
    ("torch-export", "cuda", ["--target 'cuda'", "torch-export compiles for cpu", "drop --target"]),
    ("neuron", "cpu", ["--target 'cpu'", "neuron compiles for trn1, trn2, inf2"]),
])
def test_target_this_host_cannot_compile_for(tiny_llama_dir: Path, tmp_path: Path, monkeypatch, backend, target,
                                             fragments):
    """Refused before the checkpoint is loaded, as one line (today's torch-aot fails mid-compile with a traceback)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this host has no CUDA; a GPU host acts the same
    assert_fails_with(run_cli("-m", str(tiny_llama_dir), "--backend", backend, "--target", target, *SHAPES,
                              str(tmp_path / "out")), *fragments)
    assert not (tmp_path / "out").exists()


def test_unknown_backend_lists_available(tiny_llama_dir: Path, tmp_path: Path):
    assert_fails_with(run_cli("-m", str(tiny_llama_dir), "--backend", "tpu", *SHAPES, str(tmp_path / "out")),
                      "'tpu'", "torch-aot", "torch-export", "neuron")


def listed_backends(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [line.split()[0] for line in result.output.splitlines() if line.strip()]


def test_list_backends():
    assert listed_backends(run_cli("--list-backends")) == ["torch-aot", "torch-export", "neuron"]


def test_list_backends_with_a_model_given():
    assert listed_backends(run_cli("-m", "unused", "--list-backends")) == ["torch-aot", "torch-export", "neuron"]


# ---- bad option values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("atol", ["nan", "inf", "-0.5"])
def test_atol_must_be_finite_and_not_negative(tiny_llama_dir: Path, tmp_path: Path, atol: str):
    """A NaN tolerance passed every comparison (NaN > atol is False); inf and negative ones mean nothing."""
    result = run_cli("-m", str(tiny_llama_dir), "--backend", "torch-export", "--atol", atol, *SHAPES,
                     str(tmp_path / "out"))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output  # click's usage error
    assert "Traceback" not in result.output
    assert f"Invalid value for '--atol': {float(atol)}: the tolerance must be a finite number >= 0" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("atol", [float("nan"), float("inf"), -1.0])
def test_export_options_refuse_a_bad_atol(atol: float):
    from neuron_export.errors import ExportError
    from neuron_export.export import ExportOptions

    with pytest.raises(ExportError, match=r"atol = .*must be a finite number >= 0"):
        ExportOptions(model="m", output="o", atol=atol)


def test_empty_cache_url_is_an_error(tiny_llama_dir: Path, tmp_path: Path, monkeypatch):
    """`--cache-url ""` once meant a compile cache in the current directory."""
    monkeypatch.chdir(tmp_path)  # where such a cache would land
    message = assert_fails_with(run_cli("-m", str(tiny_llama_dir), "--backend", "torch-export", "--cache-url", "",
                                        *SHAPES, str(tmp_path / "out")))
    assert "cache" in message.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_s3_cache_without_boto3_names_the_extra(tiny_llama_dir: Path, tmp_path: Path, monkeypatch):
    import sys

    for module in ("boto3", "botocore", "botocore.config"):
        monkeypatch.setitem(sys.modules, module, None)  # `import boto3` raises ImportError, as where it is missing
    assert_fails_with(run_cli("-m", str(tiny_llama_dir), "--backend", "torch-export", "--cache-url", "s3://bucket/x",
                              *SHAPES, str(tmp_path / "out")), "neuron-cache[s3]")
    assert not (tmp_path / "out").exists()


# ---- a good export ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_artifact(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    """Exported through the CLI with its own validation against transformers switched on."""
    out = tmp_path_factory.mktemp("cli_artifact") / "artifact"
    result = run_cli("-m", str(tiny_llama_dir), "--backend", "torch-export", "--batch_size", "2", *SHAPES, str(out))
    assert result.exit_code == 0, result.output
    assert "Validation against transformers" in result.output
    return out


def test_artifact_carries_checkpoint_files(cli_artifact: Path, tiny_llama_dir: Path):
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (cli_artifact / name).is_file(), f"{name} not copied into the artifact"
        assert json.loads((cli_artifact / name).read_text()) == json.loads((tiny_llama_dir / name).read_text()), name
    from transformers import AutoTokenizer, GenerationConfig

    text = "w5 w17 w150 w3"
    assert AutoTokenizer.from_pretrained(cli_artifact)(text)["input_ids"] == [5, 17, 150, 3]
    generation = GenerationConfig.from_pretrained(cli_artifact)
    assert (generation.temperature, generation.top_k) == (0.7, 17)  # the checkpoint's own, not a default


def test_artifact_config_opens_and_verifies(cli_artifact: Path, tiny_llama_dir: Path):
    config = NeuronConfig.load(cli_artifact)
    assert (config.model_type, config.batch_size, config.sequence_length) == ("llama", 2, SEQUENCE_LENGTH)
    assert (config.max_context_length, config.context_buckets) == (BUCKETS[-1], BUCKETS)
    assert config.checkpoint_id == str(tiny_llama_dir)
    assert config.weights.aliases == {"lm_head.weight": "embed_tokens.weight"}  # tied embeddings stored once
    # batch 2: one graph per bucket, token generation over both slots and over one (the default decode_batches),
    # chunked prefill in the smallest and the largest bucket (the default chunk_buckets)
    assert sorted(config.graphs) == sorted([f"context_encoding_{b}" for b in BUCKETS]
                                           + ["token_generation", "token_generation_rows1"]
                                           + [f"chunked_prefill_{b}" for b in BUCKETS])
    artifact = Artifact.open(cli_artifact, verify=True)
    assert artifact.config == config


def test_sanity_corrupted_artifact_fails_verify(cli_artifact: Path, tmp_path: Path):
    copy = Path(shutil.copytree(cli_artifact, tmp_path / "copy"))
    graph = copy / NeuronConfig.load(copy).graphs["token_generation"].file
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    Artifact.open(copy, verify=False)
    with pytest.raises(ArtifactError, match="corrupted"):
        Artifact.open(copy, verify=True)


def test_sanity_validation_catches_a_wrong_export(tiny_llama_dir: Path, tmp_path: Path, monkeypatch):
    """export's own validation (which the CLI test above relies on) fails when the graphs are wrong."""
    from neuron_export.models import decoder

    monkeypatch.setattr(decoder.RMSNorm, "forward", lambda self, x: self.weight * x)  # no normalisation
    # the compile cache is keyed on the config, not the code: it would serve the good graphs exported above
    assert_fails_with(run_cli("-m", str(tiny_llama_dir), "--backend", "torch-export", "--disable-neuron-cache", *SHAPES,
                              str(tmp_path / "out")), "differ from transformers")


def test_cli_decode_batches_and_prefill_upcast_options(tiny_llama_dir: Path, tmp_path: Path):
    common = ["-m", str(tiny_llama_dir), "--backend", "torch-export", "--disable-validation", *SHAPES]
    result = run_cli(*common, "--batch_size", "4", "--decode_batches", "1,2", str(tmp_path / "rows"))
    assert result.exit_code == 0, result.output
    assert sorted(g.rows for g in NeuronConfig.load(tmp_path / "rows").graphs.values() if g.rows) == [1, 2]
    result = run_cli(*common, "--batch_size", "4", "--decode_batches", "none", "--torch_dtype", "bfloat16",
                     "--no-prefill-upcast", str(tmp_path / "none"))
    assert result.exit_code == 0, result.output
    config = NeuronConfig.load(tmp_path / "none")
    assert all(g.rows is None for g in config.graphs.values())
    assert config.metadata["prefill_matmul_dtype"] == "bfloat16"
    # Upcasting is a kernel of torch-aot on cpu (backends/cpu_kernels.py): asked of torch-export, it is refused.
    assert_fails_with(run_cli(*common, "--torch_dtype", "bfloat16", "--prefill-upcast", str(tmp_path / "upcast")),
                      "--prefill-upcast: backend torch-export", "--backend torch-aot")
    assert_fails_with(run_cli(*common, "--batch_size", "2", "--decode_batches", "2", str(tmp_path / "bad")),
                      "--decode_batches 2", "between 1 and batch_size - 1 (1)")
