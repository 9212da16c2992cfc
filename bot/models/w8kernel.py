"""A weight-only int8 matrix multiply for small batches on AVX2 CPUs, compiled once and cached.

    y[M, N] = x[M, K] @ (w[N, K] * scale[N])^T        x, y float32; w int8; one scale per output row

Decoding reads every weight once per step for at most a few rows (one per conversation), so the
step is bound by memory: int8 weights are a quarter of float32's bytes. PyTorch's own CPU kernels
for this (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) were slower than float32 MKL on this
AVX2 machine, and fbgemm's int8 Linear also quantizes the activations (per tensor), which moved
SmolLM2's greedy tokens on more than half the positions of a prompt; weights alone, per channel,
keep its held-out loss (docs/performance.md has the figures).

The C source below is compiled with the system C compiler (`cc -O3 -mavx2 -mfma -fopenmp`) into
`<cache>/w8-<hash>.so` on first use and loaded with ctypes (`bot.models.cbuild`): a second start loads
the cached library. No compiler, no AVX2/FMA: `load()` returns None and the caller stays float32.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from bot.models import cbuild

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>

static inline __m256 load8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float tail(const float* x, const int8_t* w, long k, long K) {
    float t = 0.f;
    for (; k < K; k++) t += x[k] * (float)w[k];
    return t;
}

/* Four weight rows against two input rows at a time: 8 accumulators, each weight vector converted
   once for both rows. Rows of y are independent: a row's result never depends on the batch. */
static void block_4x2(const float* x0, const float* x1, const int8_t* w, const float* s, float* y0, float* y1,
                      long K, long K8) {
    const int8_t *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (long k = 0; k < K8; k += 8) {
        __m256 v0 = load8(w0 + k), v1 = load8(w1 + k), v2 = load8(w2 + k), v3 = load8(w3 + k);
        __m256 xa = _mm256_loadu_ps(x0 + k), xb = _mm256_loadu_ps(x1 + k);
        a0 = _mm256_fmadd_ps(v0, xa, a0); a1 = _mm256_fmadd_ps(v1, xa, a1);
        a2 = _mm256_fmadd_ps(v2, xa, a2); a3 = _mm256_fmadd_ps(v3, xa, a3);
        b0 = _mm256_fmadd_ps(v0, xb, b0); b1 = _mm256_fmadd_ps(v1, xb, b1);
        b2 = _mm256_fmadd_ps(v2, xb, b2); b3 = _mm256_fmadd_ps(v3, xb, b3);
    }
    y0[0] = (hsum(a0) + tail(x0, w0, K8, K)) * s[0]; y0[1] = (hsum(a1) + tail(x0, w1, K8, K)) * s[1];
    y0[2] = (hsum(a2) + tail(x0, w2, K8, K)) * s[2]; y0[3] = (hsum(a3) + tail(x0, w3, K8, K)) * s[3];
    y1[0] = (hsum(b0) + tail(x1, w0, K8, K)) * s[0]; y1[1] = (hsum(b1) + tail(x1, w1, K8, K)) * s[1];
    y1[2] = (hsum(b2) + tail(x1, w2, K8, K)) * s[2]; y1[3] = (hsum(b3) + tail(x1, w3, K8, K)) * s[3];
}

static void block_4x1(const float* x0, const int8_t* w, const float* s, float* y0, long K, long K8) {
    const int8_t *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (long k = 0; k < K8; k += 8) {
        __m256 xa = _mm256_loadu_ps(x0 + k);
        a0 = _mm256_fmadd_ps(load8(w0 + k), xa, a0); a1 = _mm256_fmadd_ps(load8(w1 + k), xa, a1);
        a2 = _mm256_fmadd_ps(load8(w2 + k), xa, a2); a3 = _mm256_fmadd_ps(load8(w3 + k), xa, a3);
    }
    y0[0] = (hsum(a0) + tail(x0, w0, K8, K)) * s[0]; y0[1] = (hsum(a1) + tail(x0, w1, K8, K)) * s[1];
    y0[2] = (hsum(a2) + tail(x0, w2, K8, K)) * s[2]; y0[3] = (hsum(a3) + tail(x0, w3, K8, K)) * s[3];
}

static float row_dot(const float* x, const int8_t* w, long K) { return tail(x, w, 0, K); }

void w8_matmul(const float* x, const int8_t* w, const float* s, float* y, long M, long N, long K, int threads) {
    long K8 = K & ~7L, N4 = N & ~3L;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N4; n += 4) {
        long m = 0;
        for (; m + 2 <= M; m += 2)
            block_4x2(x + m * K, x + (m + 1) * K, w + n * K, s + n, y + m * N + n, y + (m + 1) * N + n, K, K8);
        for (; m < M; m++)
            block_4x1(x + m * K, w + n * K, s + n, y + m * N + n, K, K8);
    }
    for (long n = N4; n < N; n++)
        for (long m = 0; m < M; m++)
            y[m * N + n] = row_dot(x + m * K, w + n * K, K) * s[n];
}
"""

FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]


class W8Kernel:
    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._fn = library.w8_matmul
        self._fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
        self._fn.restype = None

    def matmul(self, x: Any, qweight: Any, scales: Any, out: Any = None) -> Any:
        """x [M, K] float32 contiguous; qweight [N, K] int8 contiguous; scales [N] float32."""
        import torch

        m, k = x.shape
        n = qweight.shape[0]
        y = torch.empty((m, n), dtype=torch.float32) if out is None else out
        self._fn(x.data_ptr(), qweight.data_ptr(), scales.data_ptr(), y.data_ptr(), m, n, k,
                 torch.get_num_threads())
        return y


def load(cache_dir: Path) -> W8Kernel | None:
    """The compiled kernel (building it into cache_dir on first use), or None where it cannot run."""
    resolved = cache_dir.expanduser().resolve()
    return cbuild.load_once("w8", SOURCE, FLAGS, resolved, lambda library: W8Kernel(library, resolved))
