"""DecoderRuntime: an artifact's graphs bound to one set of weights and one KV cache.

Slots are the rows of the compiled batch (the KV-cache rows). `prefill` runs a prompt through the
context-encoding graph of the smallest bucket that fits and writes that slot's cache rows;
`decode` advances every slot by one token at its own position.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import warnings
import weakref
from pathlib import Path

import torch

from neuron_cache import Artifact, ArtifactError, NeuronConfig
from neuron_cache.trust import TrustDecision, check_graphs_trusted
from neuron_infer import quant
from neuron_infer.graphs import Graph, load_graph, plugin_loaders


def check_compatible(config: NeuronConfig, root: Path, multi_rank: bool = False) -> None:
    """Refuse artifacts this runtime cannot run, naming what differs and the fix."""
    if config.task != "text-generation":
        raise ValueError(f"{root} holds a '{config.task}' artifact; NeuronModelForCausalLM runs 'text-generation'")
    check_host(config, root)
    tp = config.tensor_parallel_size
    if tp != 1 and not multi_rank and _world_size() != tp:
        raise RuntimeError(
            f"{root} is a tensor_parallel_size={tp} artifact: a DecoderRuntime runs one rank of it, in a process "
            f"group of {tp} ranks. Open it with neuron_infer.load_runtime (or from_pretrained), which starts the ranks."
        )


def check_host(config: NeuronConfig, root: Path) -> None:
    """Refuse graphs this process cannot run (torch version, device, CPU ISA, quantization kernels), any task."""
    target = config.target
    if target.torch_version != torch.__version__:
        raise RuntimeError(
            f"{root} was compiled with torch {target.torch_version} ({target.backend}), but this process runs torch "
            f"{torch.__version__}. Compiled graphs are tied to the torch that built them: install "
            f"torch=={target.torch_version.split('+')[0]} or re-export the model with this torch."
        )
    if target.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{root} was compiled for cuda, but no CUDA device is available here; re-export with --target cpu")
    if target.device not in ("cpu", "cuda") and target.backend not in plugin_loaders():
        raise RuntimeError(
            f"{root} was compiled for '{target.device}' with backend '{target.backend}'; this machine runs cpu/cuda "
            "graphs only. Re-export with --backend torch-aot."
        )
    _check_cpu_isa(config, root)
    quant.check_quantized(config, root)


def _world_size() -> int | None:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else None


def _rank(config: NeuronConfig) -> int:
    if config.tensor_parallel_size == 1:
        return 0
    import torch.distributed as dist

    return dist.get_rank()


# ATen's names for x86 vector ISAs, weakest first. Inductor compiles CPU graphs for the exporting
# machine's ISA; run on a weaker one they die of an illegal instruction, so refuse them by name first.
CPU_ISA_RANK = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}


def host_cpu_isa() -> str:
    return torch.backends.cpu.get_cpu_capability()


def _check_cpu_isa(config: NeuronConfig, root: Path) -> None:
    built = (config.metadata or {}).get("cpu_isa")
    if config.target.device != "cpu" or config.target.backend != "torch-aot" or built not in CPU_ISA_RANK:
        return
    here = host_cpu_isa()
    if CPU_ISA_RANK.get(here, 0) < CPU_ISA_RANK[built]:
        raise RuntimeError(
            f"{root} was compiled on a {built} CPU; this machine offers {here}, and the compiled graphs would "
            f"stop on an illegal instruction. Re-export the model on this machine (or one like it)."
        )


def load_kernels(config: NeuronConfig, root: Path) -> None:
    """Build/load the kernel ops the artifact's graphs call (metadata.kernels), refusing a host that lacks one."""
    records = (config.metadata or {}).get("kernels") or {}
    if records:
        from neuron_infer import kernels

        kernels.require_all(records, str(root))


def _onednn_pack(weight: torch.Tensor, batch: int) -> torch.Tensor:
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("this artifact decodes with oneDNN-packed weights, but this torch build has no oneDNN "
                           "(mkldnn); re-export with --no-prepack-weights")
    native = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
              torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported}.get(weight.dtype)
    if native is not None and not native():
        raise RuntimeError(f"this artifact decodes {str(weight.dtype).removeprefix('torch.')} on oneDNN-packed weights, "
                           "which needs a CPU that multiplies it natively (AVX512-BF16 or AMX for bfloat16, "
                           f"AVX512-FP16 or AMX-FP16 for float16); this one offers {host_cpu_isa()} without it. "
                           "Re-export on this machine (or with --no-prepack-weights)")
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), batch)


def _mkl_pack(weight: torch.Tensor, batch: int) -> torch.Tensor:
    if not torch._C.has_mkl:
        raise RuntimeError("this artifact decodes with MKL-packed weights, but this torch build has no MKL; "
                           "re-export with --no-prepack-weights")
    return torch.ops.mkl._mkl_reorder_linear_weight(weight.contiguous(), batch)


# weights.derived ops: how to compute each derived constant from its stored source tensor.
DERIVED = {"onednn_packed_linear": _onednn_pack, "mkl_packed_linear": _mkl_pack}


def derive_constants(config, constants: dict) -> None:
    """Compute the constants the artifact says to derive at load (pre-packed weights)."""
    for name, spec in config.weights.derived.items():
        if spec.op not in DERIVED and spec.op not in quant.DERIVED:
            raise RuntimeError(f"weights.derived.{name}: unknown op '{spec.op}'; upgrade neuron-infer")
        if spec.source not in constants:
            raise ArtifactError(f"neuron_config.json weights.derived.{name} derives from '{spec.source}', which no "
                                "weights file holds; re-export the model")
        if spec.op in quant.DERIVED:  # (no batch_size: quant.py checks its own args)
            constants[name] = quant.DERIVED[spec.op](constants[spec.source], spec.args, name)
            continue
        batch = spec.args.get("batch_size")
        if not isinstance(batch, int) or not 1 <= batch <= 1 << 16:
            raise ArtifactError(f"neuron_config.json weights.derived.{name}.args.batch_size = {batch!r}: expected a "
                                "positive integer; re-export the model")
        constants[name] = DERIVED[spec.op](constants[spec.source], batch)


# Bounds on state tensors a config may ask the runtime to allocate: a crafted shape must be an error, not an
# attempt to allocate petabytes. (The graph's signature then fixes the exact shape.)
MAX_STATE_ELEMENTS = 1 << 36


def _zeros_state(spec) -> torch.Tensor:
    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype) or math.prod(spec.shape) > MAX_STATE_ELEMENTS:
        raise ArtifactError(f"neuron_config.json state '{spec.name}' = {spec.shape} {spec.dtype}: not a tensor this "
                            "runtime can allocate; re-export the model")
    return torch.zeros(spec.shape, dtype=dtype)


def _place(constants: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """`constants` on `device`, tied tensors (aliases) still one tensor each. Free on cpu: nothing moves."""
    if device.type == "cpu":
        return constants
    moved: dict[int, torch.Tensor] = {}
    for tensor in constants.values():
        if id(tensor) not in moved:
            moved[id(tensor)] = tensor.to(device)
    return {name: moved[id(tensor)] for name, tensor in constants.items()}


def check_trust(artifact: Artifact, trust_remote_code: bool, origin: str | None,
                snapshot_dir: Path | None = None) -> TrustDecision:
    """Refuse graphs this machine did not compile unless consented (neuron_cache.trust), and say so when consent
    is what lets them run. With `snapshot_dir`, the graphs are copied there as they are hashed."""
    trust = check_graphs_trusted(artifact, artifact.config.graphs, trust_remote_code=trust_remote_code,
                                 origin=origin, snapshot_dir=snapshot_dir)
    if trust.consented:
        warnings.warn(f"{artifact.root}: running graphs not compiled on this machine ({', '.join(trust.untrusted)}) "
                      "because trust_remote_code=True", stacklevel=3)
    return trust


class BoundArtifact:
    """An artifact's weights loaded and its graphs loadable by name, after the host and trust checks: what every
    runtime (DecoderRuntime, EncoderRuntime) starts from. Subclasses name their task check in `check`.

    `trust_remote_code`: consent to run graphs this machine did not compile (see neuron_cache.trust);
    `origin` names where the artifact came from (a Hub id) in the refusal.

    Constants live, and graphs run, on the artifact's `target.device`; callers pass and get CPU tensors.
    Only cuda differs from the host (a plugin backend's device takes host tensors, its loader places them).
    The cuda path is written but unverified: these machines have no GPU.
    """

    @staticmethod
    def check(config: NeuronConfig, root: Path) -> None:
        raise NotImplementedError

    def __init__(self, artifact: Artifact, *, trust_remote_code: bool = False, origin: str | None = None):
        self.root, self.config = artifact.root, artifact.config
        self.check(self.config, self.root)
        # Before anything of the graphs is opened: every graph file must be one this machine produced, or
        # the caller consented to run it. The graphs load from private copies made while hashing them, so
        # what runs is what was checked, even for buckets loaded later.
        snapshots = Path(tempfile.mkdtemp(prefix="neuron-infer-graphs-"))
        weakref.finalize(self, shutil.rmtree, snapshots, True)
        self.trust = check_trust(artifact, trust_remote_code, origin, snapshots)
        self.artifact = artifact
        self.rank = _rank(self.config)  # which weights shard this process binds (0 without tensor parallelism)
        self.device = torch.device("cuda" if self.config.target.device == "cuda" else "cpu")
        load_kernels(self.config, self.root)  # custom ops the graphs call must be registered before they load
        self.constants = self._load_constants()
        self._lock = threading.Lock()
        self._graphs: dict[str, Graph] = {}  # by name, each loaded on first use (`_graph`)

    # ---- loading -------------------------------------------------------------------------------
    def _load_constants(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        constants: dict[str, torch.Tensor] = {}
        for f in self.config.weights.files:
            if f.rank is None or f.rank == self.rank:
                constants.update(load_file(self.artifact.path(f.path)))
        for alias, name in self.config.weights.aliases.items():
            if name not in constants:
                raise ArtifactError(f"neuron_config.json weights.aliases.{alias} names '{name}', which no weights file "
                                    "holds; re-export the model")
            constants[alias] = constants[name]
        for spec in self.config.state:
            constants[spec.name] = _zeros_state(spec)
        quant.align_quantized(self.config, constants)
        derive_constants(self.config, constants)  # on the host: derived ops are CPU layouts (oneDNN)
        return _place(constants, self.device)

    def _load(self, name: str) -> Graph:
        entry = self.config.graphs[name]
        where = f"{self.root}: graph '{name}' ({entry.file})"
        graph = load_graph(self.config.target.backend, self.trust.files[name], self.constants, where)
        graph.signature.check_config(self.config, name, where)
        return graph

    def _graph(self, name: str) -> Graph:
        # Graphs load on first use: a short-prompt workload never pays for the large buckets.
        with self._lock:
            if name not in self._graphs:
                self._graphs[name] = self._load(name)
            return self._graphs[name]

    def warmup(self) -> None:
        for name in self.config.graphs:
            self._graph(name)

    # Graph inputs go to the artifact's device and outputs come back to the host; on cpu both return
    # their argument as it is (one comparison per call: no copy, nothing measurable).
    def _to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return inputs if self.device.type == "cpu" else {k: v.to(self.device) for k, v in inputs.items()}

    def _to_host(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return outputs if self.device.type == "cpu" else {k: v.cpu() for k, v in outputs.items()}


class DecoderRuntime(BoundArtifact):
    """A decoder artifact: prefill and decode over one KV cache (see the module docstring)."""

    check = staticmethod(check_compatible)

    def __init__(self, artifact: Artifact, *, trust_remote_code: bool = False, origin: str | None = None):
        super().__init__(artifact, trust_remote_code=trust_remote_code, origin=origin)
        self._decode = self._graph(self.config.graph_for("token_generation"))

    def prefill_graph(self, bucket: int) -> Graph:
        return self._graph(self.config.graph_for("context_encoding", bucket=bucket))

    def decode_graph(self, positions: torch.Tensor, rows: int | None = None) -> Graph:
        """The token-generation graph over `rows` slots (None: all) that attends over the fewest KV positions
        holding every one of `positions` (the smallest KV bucket above the largest; else the whole cache)."""
        kv = self.config.kv_bucket_for(int(positions.max()) + 1, rows) if positions.numel() else None
        if kv is None and rows is None:
            return self._decode
        return self._graph(self.config.graph_for("token_generation", bucket=kv, rows=rows))

    def chunk_graph(self, size: int) -> Graph:
        return self._graph(self.config.graph_for("chunked_prefill", bucket=size))

    def rows_for(self, n: int) -> int | None:
        """The smallest sub-batch decode graph that holds n sequences, or None (use the full batch)."""
        return self.config.rows_for(n)

    # ---- execution -----------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def max_prompt_length(self) -> int:
        """The longest prompt this artifact encodes: with chunked-prefill graphs, all but the last cache position
        (left for the first generated token); without them, the largest prompt bucket."""
        return self.config.max_prompt_length

    @property
    def vocab_size(self) -> int | None:
        """The vocabulary the compiled embedding holds (from the graph's own signature, not the editable config):
        token ids outside [0, vocab_size) must never reach the graph."""
        vocab = self._decode.signature.static.get("vocab_size")
        return int(vocab) if vocab is not None else None

    # The compiled kernels index the embedding by token id and the KV cache by position without bounds
    # checks: an id or position out of range is an out-of-bounds read or write, not an error. Every caller
    # (generate, the Engine, the vLLM runner) comes through here, so this is where they are refused.
    def _check_ids(self, ids: torch.Tensor, what: str) -> None:
        vocab = self.vocab_size
        if ids.numel() and vocab is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            bad = ids[(ids < 0) | (ids >= vocab)].view(-1)[0]
            raise ValueError(f"{what} hold token id {int(bad)}, outside this artifact's vocabulary [0, {vocab})")

    def _check_positions(self, positions: torch.Tensor) -> None:
        limit = self.config.sequence_length
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= limit):
            raise ValueError(f"positions {positions.tolist()} must lie in [0, {limit}): the KV cache holds "
                             f"sequence_length={limit} tokens")

    def prefill(self, prompt: torch.Tensor, slot: int, sampling: torch.Tensor | None = None,
                rand: torch.Tensor | None = None) -> torch.Tensor:
        """prompt (n,) int -> logits (vocab,) float32, or the sampled token () with on-device sampling."""
        n = int(prompt.shape[0])
        if n == 0:
            raise ValueError("cannot prefill an empty prompt")
        if not 0 <= slot < self.batch_size:
            raise ValueError(f"slot {slot} is outside the compiled batch (0..{self.batch_size - 1})")
        self._check_ids(prompt, "prompt")
        bucket = self.config.bucket_for(n)
        ids = torch.zeros(1, bucket, dtype=torch.long)
        ids[0, :n] = prompt
        inputs = {"input_ids": ids, "seq_id": torch.tensor([slot]), "last_index": torch.tensor([n - 1])}
        output = "logits"
        if self.config.on_device_sampling:
            inputs |= {"sampling_params": sampling.view(1, -1), "rand": rand.view(1)}
            output = "tokens"
        with torch.no_grad():
            return self._to_host(self.prefill_graph(bucket)(**self._to_device(inputs)))[output][0]

    def prefill_chunk(self, tokens: torch.Tensor, slot: int, start: int) -> torch.Tensor:
        """Encode tokens (n,) at positions start..start+n-1 of `slot`'s KV rows, whose positions [0, start) must
        already hold that sequence's prefix; returns float32 logits (n, vocab), one row per token.

        Runs the chunked-prefill graphs of `NeuronConfig.chunk_plan`: the largest chunk for the bulk, the smallest
        that holds the tail. The last chunk's padding writes K/V beyond the prompt (overwritten by the tokens that
        follow) but never past the cache end: the graph drops rows past sequence_length (see the model's
        chunked_prefill)."""
        n, slot, start = int(tokens.numel()), int(slot), int(start)
        check_chunk(self.config, n, slot, start)
        self._check_ids(tokens, "tokens")
        tokens = tokens.view(-1).long()
        out, done = [], 0
        with torch.no_grad():
            for size in self.config.chunk_plan(n):
                real = min(size, n - done)
                ids = torch.zeros(1, size, dtype=torch.long)
                ids[0, :real] = tokens[done:done + real]
                inputs = {"input_ids": ids, "seq_id": torch.tensor([slot]), "start": torch.tensor([start + done])}
                out.append(self._to_host(self.chunk_graph(size)(**self._to_device(inputs)))["logits"][:real])
                done += real
        return torch.cat(out)

    def copy_kv(self, src_slot: int, dst_slot: int, length: int) -> None:
        """Copy KV-cache positions [0, length) of every layer from `src_slot`'s rows to `dst_slot`'s (a shared
        prompt prefix, encoded once). The state tensors are (batch, kv_heads, sequence_length, head_dim), as the
        model that wrote `config.state` lays them out (checked here against the config)."""
        src_slot, dst_slot, length = int(src_slot), int(dst_slot), int(length)
        check_copy(self.config, src_slot, dst_slot, length)
        if src_slot == dst_slot or length == 0:
            return
        with torch.no_grad():
            for spec in self.config.state:
                cache = self.constants[spec.name]
                cache[dst_slot, :, :length] = cache[src_slot, :, :length]

    def decode_slots(self, slots: list[int], tokens: torch.Tensor, positions: torch.Tensor,
                     sampling: torch.Tensor | None = None, rand: torch.Tensor | None = None) -> torch.Tensor:
        """Advance only `slots` (row i: tokens[i] at positions[i]) through the smallest sub-batch graph that
        holds them (`rows_for`; callers check it exists); other slots' KV rows are untouched.

        Returns logits (len(slots), vocab), or tokens (len(slots),) with on-device sampling.
        """
        n = len(slots)
        rows = self.rows_for(n)
        if rows is None or n == 0:
            raise ValueError(f"no sub-batch decode graph holds {n} slots (this artifact has rows "
                             f"{self.config.decode_rows}); use decode() over the whole batch")
        self._check_ids(tokens, "tokens")
        self._check_positions(positions)
        if min(slots) < 0 or max(slots) >= self.batch_size:
            raise ValueError(f"slots {slots} must be within the compiled batch (0..{self.batch_size - 1})")
        # Pad by repeating the first row: it rewrites the same KV entry with the same values.
        pick = torch.tensor(list(range(n)) + [0] * (rows - n))
        inputs = {"input_ids": tokens.view(-1)[pick].view(-1, 1).long(), "positions": positions.view(-1)[pick].long(),
                  "seq_ids": torch.tensor(slots, dtype=torch.long)[pick]}
        output = "logits"
        if self.config.on_device_sampling:
            inputs |= {"sampling_params": sampling.view(n, -1)[pick], "rand": rand.view(-1)[pick]}
            output = "tokens"
        with torch.no_grad():
            graph = self.decode_graph(inputs["positions"], rows)
            return self._to_host(graph(**self._to_device(inputs)))[output][:n]

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, sampling: torch.Tensor | None = None,
               rand: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (batch,), positions (batch,) -> logits (batch, vocab), or tokens (batch,) on device."""
        self._check_ids(tokens, "tokens")
        self._check_positions(positions)
        inputs = {"input_ids": tokens.view(-1, 1).long(), "positions": positions.long()}
        output = "logits"
        if self.config.on_device_sampling:
            inputs |= {"sampling_params": sampling, "rand": rand}
            output = "tokens"
        with torch.no_grad():
            return self._to_host(self.decode_graph(inputs["positions"])(**self._to_device(inputs)))[output]


# ---- chunked prefill and KV copies: the checks both runtimes (this one, MultiRankRuntime) run before any rank does
def _check_slot(config: NeuronConfig, slot: int, what: str) -> None:
    if not 0 <= slot < config.batch_size:
        raise ValueError(f"{what} {slot!r} is outside the compiled batch (0..{config.batch_size - 1})")


def check_chunk(config: NeuronConfig, n: int, slot: int, start: int) -> None:
    if not config.chunk_buckets:
        raise ValueError("this artifact has no chunked_prefill graphs, so it encodes prompts only from position 0 and "
                         f"up to max_context_length={config.max_context_length} tokens; re-export it with "
                         "--chunk_buckets (e.g. 64,256) to encode longer prompts or continue a reused KV prefix")
    if n < 1:
        raise ValueError("cannot prefill an empty chunk of tokens")
    _check_slot(config, slot, "slot")
    limit = config.sequence_length
    if start < 0 or start + n > limit:
        raise ValueError(f"tokens at positions [{start}, {start + n}) do not fit the KV cache: start must be >= 0 and "
                         f"start + len(tokens) <= sequence_length={limit}")


def check_copy(config: NeuronConfig, src_slot: int, dst_slot: int, length: int) -> None:
    _check_slot(config, src_slot, "src_slot")
    _check_slot(config, dst_slot, "dst_slot")
    limit = config.sequence_length
    if not 0 <= length <= limit:
        raise ValueError(f"length {length!r}: copy 0..sequence_length={limit} KV positions")
    for spec in config.state:
        if len(spec.shape) != 4 or spec.shape[0] != config.batch_size or spec.shape[2] != limit:
            raise ArtifactError(f"neuron_config.json state '{spec.name}' = {spec.shape}: not a KV cache laid out "
                                f"(batch_size={config.batch_size}, kv_heads, sequence_length={limit}, head_dim); "
                                "re-export the model")


def load_runtime(artifact: Artifact, *, trust_remote_code: bool = False, origin: str | None = None):
    """The runtime for an artifact: every caller (from_pretrained, the Engine, the vLLM worker, validation)
    opens artifacts through here, so that a tensor-parallel artifact gets its rank processes."""
    tp = artifact.config.tensor_parallel_size
    if tp != 1:
        from neuron_infer.parallel import MultiRankRuntime, joined_world

        if not joined_world(tp, artifact.config.target.device):
            return MultiRankRuntime(artifact, trust_remote_code=trust_remote_code, origin=origin)
        # Under torchrun with one process per rank: this process runs its own rank, SPMD.
    return DecoderRuntime(artifact, trust_remote_code=trust_remote_code, origin=origin)
