"""Matrix multiplies straight from a GGUF file's own quantized blocks (Q4_1, Q8_0), AVX2, compiled once.

    y[M, N] = x[M, K] @ W[N, K]^T      x, y float32; W stored as the GGUF stores it, row by row in blocks

    Q4_1 block (20 bytes, 32 weights):  d (fp16), m (fp16), 16 bytes of 4-bit q; w[j] = d * q[j] + m
    Q8_0 block (34 bytes, 32 weights):  d (fp16), 32 signed bytes q;             w[j] = d * q[j]

The float32 reference model *is* these blocks dequantized (transformers converts the GGUF with exactly
`d * q + m` in float32), so a matmul on the blocks computes with the reference's own weights: nothing
is re-quantized, and the activations stay float32. Per block the kernel sums q·x in float32 and
scales once: d·Σq·x + m·Σx. 4-bit weights are 20 bytes per 32 instead of int8's 32 (and float32's 128),
and a decode step on a CPU is bound by reading (and unpacking) the weights.

The blocks are kept as planes (`Planes`: the 4-bit values, the fp16 scales, the fp16 minimums of every
block, each contiguous -- the GGUF's own bytes, rearranged once), so the minimums' term is one vector
dot product per row and no scale is converted twice. The nibbles are unpacked without lane shuffles
(each 32-bit lane shifts its own bytes), which visits a block's weights in a fixed permuted order; x is
permuted once per call to match. Rows of y are independent of each other: a row's result never
depends on which rows share the call.
`dequantize` writes the exact reference weights (for long inputs, which multiply with MKL).
Built like `bot.models.w8kernel` (the system `cc`, cached under data/kernels); where it cannot be
built, `load()` returns None and the model serves its float32 reference weights.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
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

/* A block's 32 weights as four vectors of 8, in lane order (see the *_element permutations):
   Q4_1: 16 bytes of nibbles, each 32-bit lane shifting its own bytes (no shuffles across lanes);
   Q8_0: 32 signed bytes, 8 at a time. */
static inline void q4_unpack(const uint8_t* qs, __m256* q) {
    const __m256i lo = _mm256_set1_epi32(0x0F), shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    __m256i u = _mm256_srlv_epi32(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)qs)), shift);
    q[0] = _mm256_cvtepi32_ps(_mm256_and_si256(u, lo));
    q[1] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(u, 8), lo));
    q[2] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(u, 16), lo));
    q[3] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(u, 24), lo));
}
static inline void q8_unpack(const uint8_t* qs, __m256* q) {
    for (int v = 0; v < 4; v++)
        q[v] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(qs + 8 * v))));
}
/* Vector v, lane i of a block holds weight element: */
static inline long q4_element(int v, int i) { return 4 * (i % 4) + v + 16 * (i / 4); }
static inline long q8_element(int v, int i) { return 8 * v + i; }

static inline __m256 block_dot(const __m256* q, const float* x) {
    __m256 a = _mm256_mul_ps(q[0], _mm256_loadu_ps(x));
    __m256 b = _mm256_mul_ps(q[1], _mm256_loadu_ps(x + 8));
    a = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(x + 16), a);
    b = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x + 24), b);
    return _mm256_add_ps(a, b);
}
/* sum over blocks of m[b] * xs[b] (the Q4_1 minimums times each block's sum of x) */
static inline float mins_dot(const uint16_t* m, const float* xs, long nb) {
    __m256 a = _mm256_setzero_ps();
    long b = 0;
    for (; b + 8 <= nb; b += 8)
        a = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(m + b))), _mm256_loadu_ps(xs + b), a);
    float s = hsum(a);
    for (; b < nb; b++) s = s + _cvtsh_ss(m[b]) * xs[b];
    return s;
}

/* R (<= 4) weight rows against P (<= 4) inputs: d[b] * (q . x) per block, + the minimums' term; the same
   operations for every (row, input) pair whatever R and P are, so results never depend on the batch.
   xp: permuted x, xs: x's block sums, qs/d/m: the weight rows' planes (m NULL for Q8_0). */
#define TILE(NAME, UNPACK, QB)                                                                         \
static inline __attribute__((always_inline)) void NAME(                                                \
        const float* xp, const float* xs, long K, long nb, const uint8_t* qs, const uint16_t* d,        \
        const uint16_t* m, const int R, const int P, float* y, long N) {                                \
    __m256 acc[4][4];                                                                                  \
    for (int r = 0; r < 4; r++)                                                                        \
        for (int p = 0; p < 4; p++) acc[r][p] = _mm256_setzero_ps();                                   \
    for (long b = 0; b < nb; b++) {                                                                    \
        _Pragma("GCC unroll 4")                                                                       \
        for (int r = 0; r < R; r++) {                                                                  \
            __m256 q[4];                                                                               \
            UNPACK(qs + (r * nb + b) * QB, q);                                                         \
            __m256 scale = _mm256_set1_ps(_cvtsh_ss(d[r * nb + b]));                                   \
            _Pragma("GCC unroll 4")                                                                   \
            for (int p = 0; p < P; p++)                                                                \
                acc[r][p] = _mm256_fmadd_ps(scale, block_dot(q, xp + p * K + b * 32), acc[r][p]);     \
        }                                                                                              \
    }                                                                                                  \
    for (int r = 0; r < R; r++)                                                                        \
        for (int p = 0; p < P; p++)                                                                    \
            y[p * N + r] = hsum(acc[r][p]) + (m ? mins_dot(m + r * nb, xs + p * nb, nb) : 0.f);        \
}
TILE(q4_tile, q4_unpack, 16)
TILE(q8_tile, q8_unpack, 32)

/* Inputs in groups of 4 (against 2 weight rows), then 2 and 1 (against 4): each weight block is unpacked
   once per group. The sizes are constants in each call, so the accumulators stay in registers. */
#define ROWS(TILEFN, R, QB)                                                                            \
    for (; mi + 4 <= M; mi += 4)                                                                       \
        for (int h = 0; h < R; h += 2)                                                                 \
            TILEFN(xp + mi * K, xs + mi * nb, K, nb, qs + (n + h) * nb * QB, d + (n + h) * nb,          \
                   m ? m + (n + h) * nb : 0, R - h < 2 ? R - h : 2, 4, y + mi * N + n + h, N);          \
    for (; mi + 2 <= M; mi += 2)                                                                       \
        TILEFN(xp + mi * K, xs + mi * nb, K, nb, qs + n * nb * QB, d + n * nb, m ? m + n * nb : 0, R, 2, \
               y + mi * N + n, N);                                                                     \
    for (; mi < M; mi++)                                                                               \
        TILEFN(xp + mi * K, xs + mi * nb, K, nb, qs + n * nb * QB, d + n * nb, m ? m + n * nb : 0, R, 1, \
               y + mi * N + n, N);

#define MATMUL(NAME, TILEFN, ELEMENT, QB)                                                              \
void NAME(const float* x, const uint8_t* qs, const uint16_t* d, const uint16_t* m, float* y, long M,    \
          long N, long K, int threads) {                                                                \
    long nb = K / 32;                                                                                  \
    float* xp = malloc(sizeof(float) * M * (K + nb));                                                  \
    float* xs = xp + M * K;                                                                            \
    for (long mi = 0; mi < M; mi++)                                                                    \
        for (long b = 0; b < nb; b++) {                                                                \
            const float* src = x + mi * K + b * 32;                                                    \
            float* dst = xp + mi * K + b * 32;                                                         \
            float s = 0.f;                                                                             \
            for (int v = 0; v < 4; v++)                                                                \
                for (int i = 0; i < 8; i++) dst[v * 8 + i] = src[ELEMENT(v, i)];                       \
            for (int j = 0; j < 32; j++) s = s + src[j];                                               \
            xs[mi * nb + b] = s;                                                                       \
        }                                                                                              \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                 \
    for (long n = 0; n < N; n += 4) {                                                                  \
        long mi = 0;                                                                                   \
        if (N - n >= 4) { ROWS(TILEFN, 4, QB) }                                                        \
        else if (N - n == 3) { ROWS(TILEFN, 3, QB) }                                                   \
        else if (N - n == 2) { ROWS(TILEFN, 2, QB) }                                                   \
        else { ROWS(TILEFN, 1, QB) }                                                                   \
    }                                                                                                  \
    free(xp);                                                                                          \
}
MATMUL(q4_1_matmul, q4_tile, q4_element, 16)
MATMUL(q8_0_matmul, q8_tile, q8_element, 32)

/* The reference weights, exactly as gguf-py (and so transformers) computes them in float32: d * q + m
   with the multiply and the add rounded separately (as numpy does), q in natural order. */
void q4_1_dequantize(const uint8_t* qs, const uint16_t* d, const uint16_t* m, float* out, long N, long K,
                     int threads) {
    long nb = K / 32;
    const __m128i lo = _mm_set1_epi8(0x0F);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++)
        for (long b = 0; b < nb; b++) {
            __m256 scale = _mm256_set1_ps(_cvtsh_ss(d[n * nb + b])), low = _mm256_set1_ps(_cvtsh_ss(m[n * nb + b]));
            __m128i v = _mm_loadu_si128((const __m128i*)(qs + (n * nb + b) * 16));
            __m128i ql = _mm_and_si128(v, lo), qh = _mm_and_si128(_mm_srli_epi16(v, 4), lo);
            __m128i parts[4] = {ql, _mm_srli_si128(ql, 8), qh, _mm_srli_si128(qh, 8)};
            float* o = out + n * K + b * 32;
            for (int k = 0; k < 4; k++) {
                __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[k]));
                _mm256_storeu_ps(o + 8 * k, _mm256_add_ps(_mm256_mul_ps(scale, q), low));
            }
        }
}
void q8_0_dequantize(const uint8_t* qs, const uint16_t* d, const uint16_t* m, float* out, long N, long K,
                     int threads) {
    long nb = K / 32;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++)
        for (long b = 0; b < nb; b++) {
            __m256 scale = _mm256_set1_ps(_cvtsh_ss(d[n * nb + b]));
            float* o = out + n * K + b * 32;
            for (int k = 0; k < 4; k++) {
                __m128i bytes = _mm_loadl_epi64((const __m128i*)(qs + (n * nb + b) * 32 + 8 * k));
                _mm256_storeu_ps(o + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), scale));
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
            fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] * 3 + [ctypes.c_int]
            fn.restype = None
        for fn in self._dequantize.values():
            fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 2 + [ctypes.c_int]
            fn.restype = None

    def matmul(self, planes: Planes, x: Any, out: Any) -> Any:
        """x [M, K] float32 contiguous; out [M, N] float32."""
        import torch

        m, k = x.shape
        self._matmul[planes.kind](x.data_ptr(), planes.qs.data_ptr(), planes.d.data_ptr(), planes.m_ptr,
                                  out.data_ptr(), m, planes.rows, k, torch.get_num_threads())
        return out

    def dequantize(self, planes: Planes, out: Any = None) -> Any:
        """The float32 weights [N, K] (bit for bit what gguf-py computes from the blocks)."""
        import torch

        w = torch.empty((planes.rows, planes.in_features), dtype=torch.float32) if out is None else out
        self._dequantize[planes.kind](planes.qs.data_ptr(), planes.d.data_ptr(), planes.m_ptr, w.data_ptr(),
                                      planes.rows, planes.in_features, torch.get_num_threads())
        return w


@dataclass(frozen=True)
class Planes:
    """A matrix of GGUF blocks as planes: `qs` uint8 [N, K/32 × 16 (Q4_1) or 32 (Q8_0)] -- the blocks'
    own 4-bit (or 8-bit) values, in their byte order --, and the blocks' own fp16 scales `d` [N, K/32]
    and (Q4_1) minimums `m` [N, K/32] as int16 bits. The same bytes as the GGUF's blocks, rearranged."""

    kind: str
    qs: Any
    d: Any
    m: Any  # None for Q8_0
    in_features: int

    @property
    def rows(self) -> int:
        return int(self.qs.shape[0])

    @property
    def m_ptr(self) -> int | None:
        return None if self.m is None else self.m.data_ptr()

    @property
    def nbytes(self) -> int:
        return int(self.qs.nbytes + self.d.nbytes + (0 if self.m is None else self.m.nbytes))


def planes_of(kind: str, blocks: Any, in_features: int) -> Planes:
    """Planes from raw GGUF blocks (uint8 [N, K/32 × block bytes], a torch tensor)."""
    import torch

    rows, nb = blocks.shape[0], in_features // BLOCK
    b = blocks.reshape(rows, nb, BLOCK_BYTES[kind])

    def halves(start: int) -> Any:
        return b[..., start : start + 2].contiguous().view(torch.int16).view(rows, nb)

    if kind == "q4_1":
        return Planes(kind, b[..., 4:20].reshape(rows, nb * 16).contiguous(), halves(0), halves(2), in_features)
    return Planes(kind, b[..., 2:34].reshape(rows, nb * 32).contiguous(), halves(0), None, in_features)


def blocks_of(planes: Planes) -> Any:
    """The raw GGUF blocks again (uint8 [N, K/32 × block bytes]): planes_of undone."""
    import torch

    rows, nb = planes.rows, planes.in_features // BLOCK
    parts = [planes.d.contiguous().view(torch.uint8).view(rows, nb, 2)]
    if planes.m is not None:
        parts.append(planes.m.contiguous().view(torch.uint8).view(rows, nb, 2))
    parts.append(planes.qs.view(rows, nb, -1))
    return torch.cat(parts, dim=-1).reshape(rows, -1)


def fuse_planes(parts: list[Planes]) -> Planes:
    """One matrix whose rows are `parts`' rows one after another (same kind and input width)."""
    import torch

    first = parts[0]
    return Planes(first.kind, torch.cat([p.qs for p in parts]), torch.cat([p.d for p in parts]),
                  None if first.m is None else torch.cat([p.m for p in parts]), first.in_features)


def load(cache_dir: Path) -> BlockKernel | None:
    """The compiled kernel (building it into cache_dir on first use), or None where it cannot run."""
    return cbuild.load_once("gguf-blocks", SOURCE, FLAGS, cache_dir, BlockKernel)
