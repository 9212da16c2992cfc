"""Matrix multiplies straight from a GGUF file's own quantized blocks (Q4_1, Q8_0), AVX2, compiled once.

    y[M, N] = x[M, K] @ W[N, K]^T      x, y float32; W stored as the GGUF stores it, row by row in blocks

    Q4_1 block (20 bytes, 32 weights):  d (fp16), m (fp16), 16 bytes of 4-bit q; w[j] = d * q[j] + m
    Q8_0 block (34 bytes, 32 weights):  d (fp16), 32 signed bytes q;             w[j] = d * q[j]

The float32 reference model *is* these blocks dequantized (transformers converts the GGUF with exactly
`d * q + m` in float32), so a matmul on the blocks computes with the reference's own weights: nothing
is re-quantized, and the activations stay float32. Per block the kernel sums q·x in float32 and
scales once: d·Σq·x + m·Σx. 4-bit weights are 20 bytes per 32 instead of int8's 32 (and float32's 128),
and a decode step on a CPU is bound by reading (and unpacking) the weights.

The nibbles are unpacked without lane shuffles (each 32-bit lane shifts its own bytes), which visits a
block's weights in a fixed permuted order; x is permuted once per call to match. Rows of y are
independent of each other: a row's result never depends on which rows share the call.
`dequantize` writes the exact reference weights (for long inputs, which multiply with MKL).
Built like `bot.models.w8kernel` (the system `cc`, cached under data/kernels); where it cannot be
built, `load()` returns None and the model serves its float32 reference weights.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any

from bot.models import cbuild

#: bytes per block of 32 weights
BLOCK_BYTES = {"q4_1": 20, "q8_0": 34}
BLOCK = 32

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float half(const uint8_t* p) { uint16_t h; memcpy(&h, p, 2); return _cvtsh_ss(h); }

/* The four vectors of 8 weights of one block, in lane order (see permute_*). */
static inline void q4_unpack(const uint8_t* blk, __m256* q) {
    const __m256i lo = _mm256_set1_epi32(0x0F), shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    __m256i u = _mm256_srlv_epi32(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(blk + 4))), shift);
    q[0] = _mm256_cvtepi32_ps(_mm256_and_si256(u, lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(u, 8), lo));
    q[2] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(u, 16), lo));
    q[3] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(u, 24), lo));
}
static inline void q8_unpack(const uint8_t* blk, __m256* q) {
    for (int v = 0; v < 4; v++)
        q[v] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 2 + 8 * v))));
}
/* Vector v, lane i of a block holds weight element: */
static inline long q4_element(int v, int i) { return 4 * (i % 4) + v + 16 * (i / 4); }
static inline long q8_element(int v, int i) { return 8 * v + i; }

static inline __m256 block_dot_x(const __m256* q, const __m256* x) {
    __m256 a = _mm256_mul_ps(q[0], x[0]);
    __m256 b = _mm256_mul_ps(q[1], x[1]);
    a = _mm256_fmadd_ps(q[2], x[2], a);
    b = _mm256_fmadd_ps(q[3], x[3], b);
    return _mm256_add_ps(a, b);
}
static inline __m256 block_dot(const __m256* q, const float* x) {
    __m256 a = _mm256_mul_ps(q[0], _mm256_loadu_ps(x));
    __m256 b = _mm256_mul_ps(q[1], _mm256_loadu_ps(x + 8));
    a = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(x + 16), a);
    b = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x + 24), b);
    return _mm256_add_ps(a, b);
}

/* R (<= 4) weight rows against P (<= 4) input rows; the same operations for every (row, input)
   pair whatever R and P are, so results never depend on the batch. xp: permuted x; xs: block sums. */
#define TILE(NAME, UNPACK, MINS)                                                                       \
static inline __attribute__((always_inline)) void NAME(                                                \
        const float* xp, const float* xs, long K, long nb, const uint8_t* w, long rowbytes, long bb,    \
        const int R, const int P, float* y, long N) {                                                   \
    __m256 acc[4][4];                                                                                  \
    float macc[4][4];                                                                                  \
    for (int r = 0; r < 4; r++)                                                                        \
        for (int p = 0; p < 4; p++) { acc[r][p] = _mm256_setzero_ps(); macc[r][p] = 0.f; }            \
    for (long b = 0; b < nb; b++) {                                                                    \
        __m256 xv[2][4];  /* one or two inputs' block, loaded once for the R weight rows */            \
        if (P <= 2)                                                                                    \
            for (int p = 0; p < P; p++)                                                                \
                for (int v = 0; v < 4; v++) xv[p][v] = _mm256_loadu_ps(xp + p * K + b * 32 + 8 * v);   \
        for (int r = 0; r < R; r++) {                                                                  \
            const uint8_t* blk = w + r * rowbytes + b * bb;                                            \
            __m256 q[4];                                                                               \
            UNPACK(blk, q);                                                                            \
            __m256 d = _mm256_set1_ps(half(blk));                                                      \
            for (int p = 0; p < P; p++) {                                                              \
                __m256 t = P <= 2 ? block_dot_x(q, xv[p]) : block_dot(q, xp + p * K + b * 32);       \
                acc[r][p] = _mm256_fmadd_ps(d, t, acc[r][p]);                                          \
                if (MINS) macc[r][p] = macc[r][p] + half(blk + 2) * xs[p * nb + b];                   \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
    for (int r = 0; r < R; r++)                                                                        \
        for (int p = 0; p < P; p++) y[p * N + r] = hsum(acc[r][p]) + macc[r][p];                      \
}
TILE(q4_tile, q4_unpack, 1)
TILE(q8_tile, q8_unpack, 0)

/* Input rows in groups of 4 (against 2 weight rows), then 2 and 1 (against 4): each weight block is unpacked
   once per group. The sizes are constants in each call, so the accumulators stay in registers. */
#define ROWS(TILEFN, R, BB)                                                                            \
    for (; m + 4 <= M; m += 4)                                                                         \
        for (int h = 0; h < R; h += 2)                                                                 \
            TILEFN(xp + m * K, xs + m * nb, K, nb, wn + h * rowbytes, rowbytes, BB, R - h < 2 ? R - h : 2, \
                   4, y + m * N + n + h, N);                                                           \
    for (; m + 2 <= M; m += 2)                                                                         \
        TILEFN(xp + m * K, xs + m * nb, K, nb, wn, rowbytes, BB, R, 2, y + m * N + n, N);             \
    for (; m < M; m++)                                                                                 \
        TILEFN(xp + m * K, xs + m * nb, K, nb, wn, rowbytes, BB, R, 1, y + m * N + n, N);

#define MATMUL(NAME, TILEFN, ELEMENT, BB, MINS)                                                        \
void NAME(const float* x, const uint8_t* w, float* y, long M, long N, long K, int threads) {            \
    long nb = K / 32, rowbytes = nb * BB;                                                              \
    float* xp = malloc(sizeof(float) * M * (K + nb));                                                  \
    float* xs = xp + M * K;                                                                            \
    for (long m = 0; m < M; m++)                                                                       \
        for (long b = 0; b < nb; b++) {                                                                \
            const float* src = x + m * K + b * 32;                                                     \
            float* dst = xp + m * K + b * 32;                                                          \
            float s = 0.f;                                                                             \
            for (int v = 0; v < 4; v++)                                                                \
                for (int i = 0; i < 8; i++) dst[v * 8 + i] = src[ELEMENT(v, i)];                      \
            for (int j = 0; j < 32; j++) s = s + src[j];                                               \
            xs[m * nb + b] = s;                                                                        \
        }                                                                                              \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                 \
    for (long n = 0; n < N; n += 4) {                                                                  \
        const uint8_t* wn = w + n * rowbytes;                                                          \
        long m = 0;                                                                                    \
        if (N - n >= 4) { ROWS(TILEFN, 4, BB) }                                                        \
        else if (N - n == 3) { ROWS(TILEFN, 3, BB) }                                                   \
        else if (N - n == 2) { ROWS(TILEFN, 2, BB) }                                                   \
        else { ROWS(TILEFN, 1, BB) }                                                                   \
    }                                                                                                  \
    free(xp);                                                                                          \
}
MATMUL(q4_1_matmul, q4_tile, q4_element, 20, 1)
MATMUL(q8_0_matmul, q8_tile, q8_element, 34, 0)

/* The reference weights, exactly as gguf-py (and so transformers) computes them in float32: d * q + m
   with the multiply and the add rounded separately (as numpy does), q in natural order. */
void q4_1_dequantize(const uint8_t* w, float* out, long N, long K, int threads) {
    long nb = K / 32;
    const __m128i lo = _mm_set1_epi8(0x0F);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++)
        for (long b = 0; b < nb; b++) {
            const uint8_t* blk = w + (n * nb + b) * 20;
            __m256 d = _mm256_set1_ps(half(blk)), m = _mm256_set1_ps(half(blk + 2));
            __m128i v = _mm_loadu_si128((const __m128i*)(blk + 4));
            __m128i ql = _mm_and_si128(v, lo), qh = _mm_and_si128(_mm_srli_epi16(v, 4), lo);
            __m128i parts[4] = {ql, _mm_srli_si128(ql, 8), qh, _mm_srli_si128(qh, 8)};
            float* o = out + n * K + b * 32;
            for (int k = 0; k < 4; k++) {
                __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[k]));
                _mm256_storeu_ps(o + 8 * k, _mm256_add_ps(_mm256_mul_ps(d, q), m));
            }
        }
}
void q8_0_dequantize(const uint8_t* w, float* out, long N, long K, int threads) {
    long nb = K / 32;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++)
        for (long b = 0; b < nb; b++) {
            const uint8_t* blk = w + (n * nb + b) * 34;
            __m256 d = _mm256_set1_ps(half(blk));
            float* o = out + n * K + b * 32;
            for (int k = 0; k < 4; k++) {
                __m128i bytes = _mm_loadl_epi64((const __m128i*)(blk + 2 + 8 * k));
                __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
                _mm256_storeu_ps(o + 8 * k, _mm256_mul_ps(q, d));
            }
        }
}
"""

# -ffp-contract=off: a multiply and an add stay two roundings, as in the reference and in every tile shape.
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]


class BlockKernel:
    def __init__(self, library: ctypes.CDLL) -> None:
        self._matmul = {kind: getattr(library, f"{kind}_matmul") for kind in BLOCK_BYTES}
        self._dequantize = {kind: getattr(library, f"{kind}_dequantize") for kind in BLOCK_BYTES}
        for fn in self._matmul.values():
            fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_int]
            fn.restype = None
        for fn in self._dequantize.values():
            fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_long] * 2 + [ctypes.c_int]
            fn.restype = None

    def matmul(self, kind: str, x: Any, blocks: Any, out: Any) -> Any:
        """x [M, K] float32 contiguous; blocks [N, K/32 * block bytes] uint8 contiguous; out [M, N] float32."""
        import torch

        m, k = x.shape
        self._matmul[kind](x.data_ptr(), blocks.data_ptr(), out.data_ptr(), m, blocks.shape[0], k,
                           torch.get_num_threads())
        return out

    def dequantize(self, kind: str, blocks: Any, in_features: int, out: Any = None) -> Any:
        """The float32 weights [N, K] these blocks stand for (bit for bit what gguf-py computes)."""
        import torch

        n = blocks.shape[0]
        w = torch.empty((n, in_features), dtype=torch.float32) if out is None else out
        self._dequantize[kind](blocks.data_ptr(), w.data_ptr(), n, in_features, torch.get_num_threads())
        return w


_LOCK = threading.Lock()
_LOADED: dict[Path, BlockKernel | None] = {}


def load(cache_dir: Path) -> BlockKernel | None:
    """The compiled kernel (building it into cache_dir on first use), or None where it cannot run."""
    cache_dir = cache_dir.expanduser().resolve()
    with _LOCK:
        if cache_dir not in _LOADED:
            library = cbuild.build("gguf-blocks", SOURCE, FLAGS, cache_dir)
            _LOADED[cache_dir] = None if library is None else BlockKernel(library)
        return _LOADED[cache_dir]
