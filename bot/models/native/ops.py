"""The small per-layer operations of a decode step in C: RMSNorm, rotary embedding + KV write,
attention over the running batch's cache, SiLU gate.

A decode step of a 30-layer model is ~450 small operations; each torch operation costs 2-40 µs of
dispatch (RMSNorm alone took ~40 µs a call), several times the arithmetic for a handful of rows.
These functions do the same arithmetic in one call each, on the model's preallocated buffers, with
the same formulas as transformers' Llama where the numbers could tell (RMSNorm as weight · (x ·
rsqrt(mean(x²) + eps)), rotary as x·cos + rotate_half(x)·sin; multiplies and adds are not fused,
-ffp-contract=off). Rows are independent: a row's numbers never depend on the batch.

`decode_layers` runs every layer of a decode step in one call when the weights are GGUF blocks and no
row uses a LoRA (the common case): the same calls in the same order as the Python loop, without ~300
calls through ctypes. Built like the matmul kernels (`bot.models.cbuild`, with them compiled in);
`load()` returns None where it cannot be built, and the model then runs the same step with torch
operations.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from bot.models import cbuild

SOURCE = r"""
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline float ops_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float dot(const float* a, const float* b, long n) {
    __m256 acc = _mm256_setzero_ps();
    long i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = ops_hsum(acc);
    for (; i < n; i++) s = s + a[i] * b[i];
    return s;
}
static inline float mean_square(const float* x, long n) { return dot(x, x, n) / (float)n; }

/* e^x for 8 floats (Cephes' expf: range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial,
   ~1 ulp, as fast exps go); x <= -88 gives 0 (so -inf, a masked score, gives exactly 0). */
static inline __m256 exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.0f);
    __m256 zero = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 fx = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                              _mm256_set1_ps(0.5f)));
    x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(0.693359375f)));
    x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(y, x), x), x), _mm256_set1_ps(1.0f));
    __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero, _mm256_mul_ps(y, _mm256_castsi256_ps(n)));
}
static inline float exp1(float x) {
    float in[8] = {x}, out[8];
    _mm256_storeu_ps(out, exp8(_mm256_loadu_ps(in)));
    return out[0];
}

static void norm_row(const float* x, const float* w, float* out, long n, float eps) {
    float r = 1.0f / sqrtf(mean_square(x, n) + eps);
    for (long i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}

void rms_norm(const float* x, const float* w, float* out, long rows, long n, float eps) {
    for (long r = 0; r < rows; r++) norm_row(x + r * n, w, out + r * n, n, eps);
}

/* h += delta; out = rms_norm(h) */
void add_rms_norm(float* h, const float* delta, long delta_stride, const float* w, float* out, long rows, long n,
                  float eps) {
    for (long r = 0; r < rows; r++) {
        float* hr = h + r * n;
        const float* dr = delta + r * delta_stride;
        for (long i = 0; i < n; i++) hr[i] = hr[i] + dr[i];
        norm_row(hr, w, out + r * n, n, eps);
    }
}

static void rotate(float* x, const float* c, const float* s, long D) {
    long half = D / 2;
    for (long i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        float a_c = a * c[i], b_s = b * s[i], b_c = b * c[i + half], a_s = a * s[i + half];
        x[i] = a_c - b_s;
        x[i + half] = b_c + a_s;
    }
}

/* Rotate each row's q heads in place (at its own position) and write its rotated k and its v into the
   cache buffers [rows, kv_heads, cap, D] at column `at`. cos/sin: tables [positions, D]. */
void rope_store(float* qkv, long stride, long heads, long kv_heads, long D, const float* cos_t, const float* sin_t,
                const int64_t* pos, float* kbuf, float* vbuf, long cap, long at, long rows) {
    for (long r = 0; r < rows; r++) {
        float* row = qkv + r * stride;
        const float* c = cos_t + pos[r] * D;
        const float* s = sin_t + pos[r] * D;
        for (long h = 0; h < heads; h++) rotate(row + h * D, c, s, D);
        for (long g = 0; g < kv_heads; g++) {
            float* k = kbuf + ((r * kv_heads + g) * cap + at) * D;
            float* v = vbuf + ((r * kv_heads + g) * cap + at) * D;
            const float* ks = row + (heads + g) * D;
            const float* vs = row + (heads + kv_heads + g) * D;
            for (long i = 0; i < D; i++) { k[i] = ks[i]; v[i] = vs[i]; }
            rotate(k, c, s, D);
        }
    }
}

/* One query per (row, head) over the row's first T cached positions where mask != 0:
   softmax(q·kᵀ · scale) · v into out [rows, heads * D]. Head h reads kv head h / group. */
void attend(const float* qkv, long stride, const float* kbuf, const float* vbuf, long cap, long T,
            const int64_t* mask, long mask_stride, float* out, long rows, long kv_heads, long group, long D,
            float scale, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads) if (rows * kv_heads * T > 16384)
    for (long rg = 0; rg < rows * kv_heads; rg++) {
        long r = rg / kv_heads, g = rg % kv_heads;
        const float* keys = kbuf + (r * kv_heads + g) * cap * D;
        const float* values = vbuf + (r * kv_heads + g) * cap * D;
        const int64_t* m = mask + r * mask_stride;
        long padded = (T + 7) & ~7L;
        float* p = malloc(sizeof(float) * (padded > 0 ? padded : 8));
        for (long j = 0; j < group; j++) {
            long h = g * group + j;
            const float* q = qkv + r * stride + h * D;
            float top = -INFINITY;
            for (long t = 0; t < T; t++) {
                p[t] = m[t] ? dot(q, keys + t * D, D) * scale : -INFINITY;
                if (p[t] > top) top = p[t];
            }
            for (long t = T; t < padded; t++) p[t] = -INFINITY;
            __m256 vtop = _mm256_set1_ps(top), vsum = _mm256_setzero_ps();
            for (long t = 0; t < padded; t += 8) {
                __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + t), vtop));
                _mm256_storeu_ps(p + t, e);
                vsum = _mm256_add_ps(vsum, e);
            }
            float inv = 1.0f / ops_hsum(vsum);
            float* o = out + r * group * kv_heads * D + h * D;
            for (long i = 0; i < D; i++) o[i] = 0.f;
            for (long t = 0; t < T; t++) {
                if (p[t] == 0.f) continue;
                float w = p[t] * inv;
                const float* v = values + t * D;
                for (long i = 0; i < D; i++) o[i] = o[i] + w * v[i];
            }
        }
        free(p);
    }
}

/* act = silu(gate) * up = (gate / (1 + e^-gate)) * up, gate/up the two halves of each row of gu */
void silu_mul(const float* gu, float* act, long rows, long n) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (long r = 0; r < rows; r++) {
        const float* g = gu + r * 2 * n;
        const float* u = g + n;
        float* a = act + r * n;
        long i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 x = _mm256_loadu_ps(g + i);
            __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, exp8(_mm256_xor_ps(x, neg))));
            _mm256_storeu_ps(a + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
        }
        for (; i < n; i++) a[i] = (g[i] / (1.0f + exp1(-g[i]))) * u[i];
    }
}

/* ---- a whole decode step over GGUF-block weights (the default), for batches without LoRA rows ---- */

typedef struct { const uint8_t* qs; const uint16_t* d; const uint16_t* m; long rows; long kind; } planes_t;
typedef struct { const float* attn_norm; const float* mlp_norm; planes_t qkv, o, gate_up, down; } layer_t;

void q4_1_matmul(const float*, const uint8_t*, const uint16_t*, const uint16_t*, float*, long, long, long, int);
void q8_0_matmul(const float*, const uint8_t*, const uint16_t*, const uint16_t*, float*, long, long, long, int);

static void matmul_planes(const planes_t* p, const float* x, float* y, long M, long K, int threads) {
    if (p->kind == 0) q4_1_matmul(x, p->qs, p->d, p->m, y, M, p->rows, K, threads);
    else q8_0_matmul(x, p->qs, p->d, p->m, y, M, p->rows, K, threads);
}

/* Every layer of one decode step, exactly the sequence the model's Python loop makes of the calls above;
   ends with the final norm of the hidden states in x. kbufs/vbufs: each layer's cache buffers
   [rows, kv_heads, cap, D], the new position written at column `at`. */
void decode_layers(const layer_t* layers, long n_layers, float* const* kbufs, float* const* vbufs, long cap,
                   long at, float* h, float* x, float* qkv, float* attn, float* o, float* gu, float* act,
                   float* down, const float* final_norm, const int64_t* mask, long mask_stride,
                   const int64_t* pos, const float* cos_t, const float* sin_t, long rows, long hidden, long heads,
                   long kv_heads, long D, long inter, float eps, float scale, int threads) {
    long width = (heads + 2 * kv_heads) * D;
    rms_norm(h, layers[0].attn_norm, x, rows, hidden, eps);
    for (long i = 0; i < n_layers; i++) {
        const layer_t* L = layers + i;
        matmul_planes(&L->qkv, x, qkv, rows, hidden, threads);
        rope_store(qkv, width, heads, kv_heads, D, cos_t, sin_t, pos, kbufs[i], vbufs[i], cap, at, rows);
        attend(qkv, width, kbufs[i], vbufs[i], cap, at + 1, mask, mask_stride, attn, rows, kv_heads,
               heads / kv_heads, D, scale, threads);
        matmul_planes(&L->o, attn, o, rows, heads * D, threads);
        add_rms_norm(h, o, hidden, L->mlp_norm, x, rows, hidden, eps);
        matmul_planes(&L->gate_up, x, gu, rows, hidden, threads);
        silu_mul(gu, act, rows, inter);
        matmul_planes(&L->down, act, down, rows, inter, threads);
        add_rms_norm(h, down, hidden, i + 1 < n_layers ? layers[i + 1].attn_norm : final_norm, x, rows, hidden,
                     eps);
    }
}
"""

FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC", "-lm"]

_P = ctypes.c_void_p
_L = ctypes.c_long
_F = ctypes.c_float
_SIGNATURES = {
    "rms_norm": [_P, _P, _P, _L, _L, _F],
    "add_rms_norm": [_P, _P, _L, _P, _P, _L, _L, _F],
    "rope_store": [_P, _L, _L, _L, _L, _P, _P, _P, _P, _P, _L, _L, _L],
    "attend": [_P, _L, _P, _P, _L, _L, _P, _L, _P, _L, _L, _L, _L, _F, ctypes.c_int],
    "silu_mul": [_P, _P, _L, _L],
}


class Planes(ctypes.Structure):
    _fields_ = [("qs", _P), ("d", _P), ("m", _P), ("rows", _L), ("kind", _L)]


class LayerDesc(ctypes.Structure):
    _fields_ = [("attn_norm", _P), ("mlp_norm", _P), ("qkv", Planes), ("o", Planes), ("gate_up", Planes),
                ("down", Planes)]


_SIGNATURES["decode_layers"] = [ctypes.POINTER(LayerDesc), _L, ctypes.POINTER(_P), ctypes.POINTER(_P), _L, _L,
                                _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _L, _P, _P, _P, _L, _L, _L, _L, _L, _L, _F,
                                _F, ctypes.c_int]


class NativeOps:
    """The C functions, called with raw pointers (see SOURCE for each one's contract)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(library, name)
            fn.argtypes, fn.restype = argtypes, None
        self.rms_norm = library.rms_norm
        self.add_rms_norm = library.add_rms_norm
        self.rope_store = library.rope_store
        self.attend = library.attend
        self.silu_mul = library.silu_mul
        self.decode_layers = library.decode_layers

    @staticmethod
    def pointers(values: list[int]) -> Any:
        return (_P * len(values))(*values)

    @staticmethod
    def layer_descs(layers: list[Any]) -> Any:
        """A C array describing the layers (their norms and GGUF-block planes); the tensors it points
        into belong to the model, which outlives it."""

        def planes(linear: Any) -> Planes:
            p = linear.planes
            return Planes(p.qs.data_ptr(), p.d.data_ptr(), p.m_ptr, p.rows, 0 if p.kind == "q4_1" else 1)

        descs = (LayerDesc * len(layers))()
        for desc, layer in zip(descs, layers, strict=True):
            desc.attn_norm, desc.mlp_norm = layer.attn_norm.data_ptr(), layer.mlp_norm.data_ptr()
            desc.qkv, desc.o = planes(layer.qkv), planes(layer.o)
            desc.gate_up, desc.down = planes(layer.gate_up), planes(layer.down)
        return descs


def load(cache_dir: Path) -> NativeOps | None:
    """The compiled kernel (building it into cache_dir on first use), or None where it cannot run."""
    from bot.models import qkernel

    # The block kernels are compiled in too, for decode_layers.
    return cbuild.load_once("native-ops", qkernel.SOURCE + SOURCE, FLAGS, cache_dir, NativeOps)
