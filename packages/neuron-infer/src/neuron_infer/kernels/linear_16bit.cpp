// neuron::linear_16bit: y = x @ w.T (+ bias) for bfloat16 / float16 x [..., K] and w [N, K] (row-major, as stored).
//
// Built for decode: M = x rows is small (the batch), so every weight element is read from memory once and used
// M times, and the op is bound by memory bandwidth. Each task walks a contiguous range of weight rows, NR rows at
// a time, and applies every block to all M rows of x (at most 8 at once; larger M is done in chunks of 8).
// Products accumulate in float32; bias is added in float32 and the output is rounded once (round to nearest
// even), as a native 16-bit GEMM does.
//
// One source for every x86 CPU: each vector path is compiled for its ISA by a per-function target attribute and
// chosen at run time by cpuid (__builtin_cpu_supports), so the library never needs -march=native and never
// executes an instruction the CPU lacks.
//   avx512_bf16  _mm512_dpbf16_ps on bf16 pairs (bfloat16 only)
//   avx512       16-bit -> float32 (shift for bf16, vcvtph2ps for fp16) + FMA, 512-bit
//   avx2         the same with 256-bit vectors (AVX2 + FMA + F16C)
//   scalar       portable C++
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/StringUtil.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NEURON_X86 1
#include <immintrin.h>
#define TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define NEURON_X86 0
#endif

namespace {

constexpr int kMaxRows = 8;  // rows of x applied to one weight block
constexpr int64_t kPad = 32;  // x rows are copied zero-padded to a multiple of this (the widest vector step)

enum class Path { scalar = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3 };
const char* const kPathNames[] = {"scalar", "avx2", "avx512", "avx512_bf16"};

// One weight block: out[m * NR + r] = dot(x row m, w row n + r) in float32, for m < M and r < NR.
// x is float32 (or bfloat16 for the dpbf16 path), rows `xs` elements apart and zero-padded to a multiple of kPad.
using BlockFn = void (*)(const void* x, int64_t xs, const uint16_t* w, int64_t K, float* out);

struct Kernel {
  BlockFn wide;  // NR rows at once
  BlockFn one;  // a single row (the remainder of a range)
  int nr;
};

inline float to_float(uint16_t v, bool half) {
  if (half) return static_cast<float>(c10::Half(v, c10::Half::from_bits()));
  return static_cast<float>(c10::BFloat16(v, c10::BFloat16::from_bits()));
}

template <bool Half, int M, int NR>
void block_scalar(const void* xv, int64_t xs, const uint16_t* w, int64_t K, float* out) {
  const float* x = static_cast<const float*>(xv);
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < NR; ++r) {
      float acc = 0.f;
      const uint16_t* wr = w + r * K;
      for (int64_t k = 0; k < K; ++k) acc += x[m * xs + k] * to_float(wr[k], Half);
      out[m * NR + r] = acc;
    }
}

#if NEURON_X86
// Rows are short (K of a few hundred to a few thousand): 8 interleaved streams of ~18 cache lines each are too short
// for the hardware prefetcher to ramp up, and reading them from DRAM ran at ~60% of the rate of long rows. Every
// kernel prefetches into L2 (T1: more misses in flight than L1 holds) the line NEURON_PF_BLOCKS blocks ahead at the
// column it reads. Measured (1 thread, 128 MB of bf16, K=576, M=1/4/8): no prefetch 24.6/34.0/44.1 ms, T0 one
// block ahead 24.2/28.4/34.1, T1 four blocks ahead 14.4/14.4/18.4 (oneDNN packed 21.2/19.9/23.8).
#ifndef NEURON_PF_BLOCKS
#define NEURON_PF_BLOCKS 4
#endif
#ifndef NEURON_PF_HINT
#define NEURON_PF_HINT _MM_HINT_T1
#endif
template <int NR>
inline void prefetch_next_block(const uint16_t* w, int64_t K, int64_t k) {
#pragma GCC unroll 8
  for (int r = 0; r < NR * (NEURON_PF_BLOCKS > 0); ++r)
    _mm_prefetch(reinterpret_cast<const char*>(w + (NEURON_PF_BLOCKS * NR + r) * K + k), NEURON_PF_HINT);
}

// ---- AVX2: 8 weights per step, converted to float32, FMA into M x NR accumulators --------------------------------
template <bool Half>
TARGET_AVX2 inline __m256 load8(const uint16_t* p) {
  __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (Half) return _mm256_cvtph_ps(v);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

TARGET_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <bool Half, int M, int NR>
TARGET_AVX2 void block_avx2(const void* xv, int64_t xs, const uint16_t* w, int64_t K, float* out) {
  const float* x = static_cast<const float*>(xv);
  __m256 acc[M][NR];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    if ((k & 31) == 0) prefetch_next_block<NR>(w, K, k);
    __m256 wv[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) wv[r] = load8<Half>(w + r * K + k);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      __m256 xm = _mm256_loadu_ps(x + m * xs + k);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_fmadd_ps(xm, wv[r], acc[m][r]);
    }
  }
  // Every loop over the accumulators is unrolled, so they stay in registers (never spilled to the stack).
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      float s = hsum8(acc[m][r]);
      for (int64_t t = k; t < K; ++t) s += x[m * xs + t] * to_float(w[r * K + t], Half);
      out[m * NR + r] = s;
    }
}

// out[i] = sum of the lanes of acc[i / NR][i % NR] for every i < M * NR. Four at a time by a transposing add tree
// (13 instructions per 4 sums instead of ~32): with K in the hundreds the reductions are a good part of the work.
TARGET_AVX512 inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));  // a0 b0 a1 b1 per 128 bits
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));  // a b c d
  const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
}

template <int M, int NR>
TARGET_AVX512 inline void reduce_store(const __m512 (&acc)[M][NR], float* out) {
  constexpr int n = M * NR;
  int i = 0;
#pragma GCC unroll 16
  for (; i + 4 <= n; i += 4)
    _mm_storeu_ps(out + i, reduce4(acc[i / NR][i % NR], acc[(i + 1) / NR][(i + 1) % NR],
                                   acc[(i + 2) / NR][(i + 2) % NR], acc[(i + 3) / NR][(i + 3) % NR]));
#pragma GCC unroll 4
  for (; i < n; ++i) out[i] = _mm512_reduce_add_ps(acc[i / NR][i % NR]);
}

// ---- AVX-512F: 16 weights per step, masked loads for the K tail ---------------------------------------------------
template <bool Half>
TARGET_AVX512 inline __m512 load16(const uint16_t* p, __mmask16 mask) {
  __m256i v = _mm256_maskz_loadu_epi16(mask, p);
  if constexpr (Half) return _mm512_cvtph_ps(v);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

template <bool Half, int M, int NR>
TARGET_AVX512 inline void step512(const float* x, int64_t xs, const uint16_t* w, int64_t K, int64_t k,
                                  __mmask16 mask, __m512 (&acc)[M][NR]) {
  __m512 wv[NR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) wv[r] = load16<Half>(w + r * K + k, mask);
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
    __m512 xm = _mm512_loadu_ps(x + m * xs + k);  // zero-padded past K
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_fmadd_ps(xm, wv[r], acc[m][r]);
  }
}

template <bool Half, int M, int NR>
TARGET_AVX512 void block_avx512(const void* xv, int64_t xs, const uint16_t* w, int64_t K, float* out) {
  const float* x = static_cast<const float*>(xv);
  __m512 acc[M][NR];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    if ((k & 31) == 0) prefetch_next_block<NR>(w, K, k);
    step512<Half, M, NR>(x, xs, w, K, k, __mmask16(0xFFFF), acc);
  }
  if (k < K) step512<Half, M, NR>(x, xs, w, K, k, __mmask16((1u << (K - k)) - 1), acc);
  reduce_store<M, NR>(acc, out);
}

// ---- AVX512-BF16: 32 weights per step, vdpbf16ps (pairwise bf16 products into float32 lanes) ------------------------
template <int M, int NR>
TARGET_AVX512BF16 inline void step_bf16(const uint16_t* x, int64_t xs, const uint16_t* w, int64_t K, int64_t k,
                                        __mmask32 mask, __m512 (&acc)[M][NR]) {
  __m512i wv[NR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) wv[r] = _mm512_maskz_loadu_epi16(mask, w + r * K + k);
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
    __m512i xm = _mm512_loadu_si512(x + m * xs + k);  // zero-padded past K
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)xm, (__m512bh)wv[r]);
  }
}

template <int M, int NR>
TARGET_AVX512BF16 void block_avx512_bf16(const void* xv, int64_t xs, const uint16_t* w, int64_t K, float* out) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  __m512 acc[M][NR];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    prefetch_next_block<NR>(w, K, k);
    step_bf16<M, NR>(x, xs, w, K, k, __mmask32(0xFFFFFFFFu), acc);
  }
  if (k < K) step_bf16<M, NR>(x, xs, w, K, k, __mmask32((1u << (K - k)) - 1), acc);
  reduce_store<M, NR>(acc, out);
}
#endif

// Weight rows per block: as many as the register file holds (32 zmm / 16 ymm) as M x NR accumulators, NR weight
// vectors and one x vector, at most 8 (more concurrent weight streams stop helping). More rows per block means
// fewer x loads per multiply, which bounds the kernel at M >= 4.
constexpr int nr_for(int m, int registers) {
  int nr = (registers - 1) / (m + 1);
  return nr < 1 ? 1 : (nr > 8 ? 8 : nr);
}

template <int M>
Kernel kernel_for(Path path, bool half) {
  switch (path) {
#if NEURON_X86
    case Path::avx512_bf16:
      return {block_avx512_bf16<M, nr_for(M, 32)>, block_avx512_bf16<M, 1>, nr_for(M, 32)};
    case Path::avx512:
      if (half) return {block_avx512<true, M, nr_for(M, 32)>, block_avx512<true, M, 1>, nr_for(M, 32)};
      return {block_avx512<false, M, nr_for(M, 32)>, block_avx512<false, M, 1>, nr_for(M, 32)};
    case Path::avx2:
      if (half) return {block_avx2<true, M, nr_for(M, 16)>, block_avx2<true, M, 1>, nr_for(M, 16)};
      return {block_avx2<false, M, nr_for(M, 16)>, block_avx2<false, M, 1>, nr_for(M, 16)};
#endif
    default:
      if (half) return {block_scalar<true, M, 4>, block_scalar<true, M, 1>, 4};
      return {block_scalar<false, M, 4>, block_scalar<false, M, 1>, 4};
  }
}

Kernel kernel_for(Path path, bool half, int m) {
  switch (m) {
    case 1: return kernel_for<1>(path, half);
    case 2: return kernel_for<2>(path, half);
    case 3: return kernel_for<3>(path, half);
    case 4: return kernel_for<4>(path, half);
    case 5: return kernel_for<5>(path, half);
    case 6: return kernel_for<6>(path, half);
    case 7: return kernel_for<7>(path, half);
    default: return kernel_for<8>(path, half);
  }
}

bool supported(Path path, bool half) {
#if NEURON_X86
  switch (path) {
    case Path::avx512_bf16:
      return !half && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    case Path::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma");
    case Path::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    default:
      return true;
  }
#else
  return path == Path::scalar;
#endif
}

bool is_half(c10::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf,
              "neuron::linear_16bit multiplies bfloat16 or float16, not ", dtype);
  return dtype == at::kHalf;
}

std::vector<std::string> paths(c10::ScalarType dtype) {
  const bool half = is_half(dtype);
  std::vector<std::string> out;
  for (int p = 3; p >= 0; --p)
    if (supported(Path(p), half)) out.emplace_back(kPathNames[p]);
  return out;
}

Path best_path(bool half) {
  static const Path best[2] = {
      supported(Path::avx512_bf16, false) ? Path::avx512_bf16
      : supported(Path::avx512, false)    ? Path::avx512
      : supported(Path::avx2, false)      ? Path::avx2
                                          : Path::scalar,
      supported(Path::avx512, true) ? Path::avx512 : supported(Path::avx2, true) ? Path::avx2 : Path::scalar};
  return best[half];
}

// x rows [m0, m0 + rows) in the layout the path's kernels read: zero-padded rows of `xs` elements, float32 (or
// the raw bf16 bits for the dpbf16 path).
std::vector<uint32_t> pack_x(const uint16_t* x, int64_t K, int64_t xs, int rows, Path path, bool half) {
  if (path == Path::avx512_bf16) {
    std::vector<uint32_t> buf((rows * xs + 1) / 2, 0);
    auto* dst = reinterpret_cast<uint16_t*>(buf.data());
    for (int m = 0; m < rows; ++m) std::memcpy(dst + m * xs, x + m * K, K * sizeof(uint16_t));
    return buf;
  }
  std::vector<uint32_t> buf(rows * xs, 0);
  auto* dst = reinterpret_cast<float*>(buf.data());
  for (int m = 0; m < rows; ++m)
    for (int64_t k = 0; k < K; ++k) dst[m * xs + k] = to_float(x[m * K + k], half);
  return buf;
}

template <typename T>
void store(T* y, int64_t N, int rows, int64_t n, int width, const float* acc, const T* bias) {
  for (int m = 0; m < rows; ++m)
    for (int r = 0; r < width; ++r) {
      float v = acc[m * width + r];
      if (bias) v += static_cast<float>(bias[n + r]);
      y[m * N + n + r] = T(v);  // one rounding, to nearest even
    }
}

template <typename T>
void run(const uint16_t* x, const uint16_t* w, const T* bias, T* y, int64_t M, int64_t N, int64_t K, Path path) {
  const bool half = std::is_same_v<T, c10::Half>;
  const int64_t xs = (K + kPad - 1) / kPad * kPad;
  // Enough rows per task that a task reads at least ~64 KiB of weights: parallel_for's overhead stays small.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(1, K * 2));
  for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, M - m0));
    const std::vector<uint32_t> xp = pack_x(x + m0 * K, K, xs, rows, path, half);
    const Kernel kern = kernel_for(path, half, rows);
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      float acc[kMaxRows * 8];
      int64_t n = begin;
      for (; n + kern.nr <= end; n += kern.nr) {
        kern.wide(xp.data(), xs, w + n * K, K, acc);
        store(y + m0 * N, N, rows, n, kern.nr, acc, bias);
      }
      for (; n < end; ++n) {
        kern.one(xp.data(), xs, w + n * K, K, acc);
        store(y + m0 * N, N, rows, n, 1, acc, bias);
      }
    });
  }
}

Path parse_path(const std::string& name, bool half) {
  for (int p = 0; p < 4; ++p)
    if (name == kPathNames[p]) {
      TORCH_CHECK(supported(Path(p), half), "neuron::linear_16bit: path '", name, "' is not available for ",
                  half ? "float16" : "bfloat16", " on this CPU (available: ", c10::Join(", ", paths(half ? at::kHalf : at::kBFloat16)), ")");
      return Path(p);
    }
  TORCH_CHECK(false, "neuron::linear_16bit: unknown path '", name, "' (scalar, avx2, avx512, avx512_bf16)");
}

at::Tensor linear_with(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                       std::optional<Path> forced) {
  const bool half = is_half(x.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "neuron::linear_16bit runs on cpu tensors");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == x.scalar_type() && x.dim() >= 1 && x.size(-1) == w.size(1),
              "neuron::linear_16bit: expected x [..., K] and w [N, K] of one dtype, got x ", x.sizes(), " ",
              x.scalar_type(), " and w ", w.sizes(), " ", w.scalar_type());
  const int64_t N = w.size(0), K = w.size(1);
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N && bias->scalar_type() == x.scalar_type(),
                "neuron::linear_16bit: bias must be [", N, "] ", x.scalar_type(), ", got ", bias->sizes(), " ",
                bias->scalar_type());
  const at::Tensor xc = x.reshape({-1, K}).contiguous();
  const at::Tensor wc = w.contiguous();
  const int64_t M = xc.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  at::Tensor y = at::empty(shape, x.options());
  if (M == 0 || N == 0) return y;
  const Path path = forced.value_or(best_path(half));
  const auto* xp = static_cast<const uint16_t*>(xc.const_data_ptr());
  const auto* wp = static_cast<const uint16_t*>(wc.const_data_ptr());
  at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  if (half)
    run<c10::Half>(xp, wp, bc.defined() ? bc.const_data_ptr<c10::Half>() : nullptr, y.data_ptr<c10::Half>(), M, N,
                   K, path);
  else
    run<c10::BFloat16>(xp, wp, bc.defined() ? bc.const_data_ptr<c10::BFloat16>() : nullptr,
                       y.data_ptr<c10::BFloat16>(), M, N, K, path);
  return y;
}

at::Tensor linear_16bit(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  return linear_with(x, w, bias, std::nullopt);
}

at::Tensor linear_16bit_path(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                             std::string path) {
  return linear_with(x, w, bias, parse_path(path, is_half(x.scalar_type())));
}

}  // namespace

TORCH_LIBRARY(neuron, m) {
  m.def("linear_16bit(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("linear_16bit_path(Tensor x, Tensor w, Tensor? bias, str path) -> Tensor");
  m.def("linear_16bit_paths(ScalarType dtype) -> str[]", &paths);
}

TORCH_LIBRARY_IMPL(neuron, CPU, m) {
  m.impl("linear_16bit", &linear_16bit);
  m.impl("linear_16bit_path", &linear_16bit_path);
}
