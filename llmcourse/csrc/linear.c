/* The course's own matrix-vector kernels, for decoding at batch 1 (or a few rows): y (M, N) = x (M, K) @ W^T + bias
   with W stored in float32, in int8 codes (one float32 scale per row), or in int4 codes packed two per byte (one
   float16 scale per group of G columns, the layout of `llmcourse.quantization`).

   Decoding reads every weight once per token, so its speed is how fast the weights stream from memory: int8 reads
   4x and int4 8x fewer bytes than float32, if the arithmetic keeps up. The functions turn the codes into float32
   in registers and accumulate in float32, except int8 on CPUs with AVX-512 VNNI, which multiplies the codes by x
   written as two 16-bit integer parts (exact to 5e-10 of max |x|) with integer dot-product instructions; either
   way the result is the dequantized matmul's up to rounding (tested to 1e-5 of the largest output). Independent
   accumulators hide the latency of the multiply-adds, OpenMP splits the N outputs among the threads (PyTorch's
   OpenMP: the dynamic loader gives this library the libgomp PyTorch already loaded), and each thread reads its
   weights as two streams with prefetches ahead, which is what keeps the memory busy (measured below).

   The same products, with the layer norms, the attention over the KV-cache and GELU written here too, make
   `gpt_blocks_step`: a decoding step of all of a GPT-2's blocks in one call, in one parallel region.

   Built by llmcourse/native.py with the compiler at hand and -march=native: AVX-512 or AVX2 code where the CPU has
   them, plain C (vectorized as the compiler can) elsewhere. PyTorch's own weight-only kernels were measured first
   and were slower, or needed bfloat16 activations (see llmcourse/native.py). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

/* Ask for the cache line PREFETCH_AHEAD bytes further down a stream of weights, on top of the two streams (see
   FOR_EACH_ROW_IN_TWO_STREAMS). Measured on a 2-core Xeon (AVX-512 VNNI): one int8 product streamed from memory went
   from 11.2 to 14.0 GB/s on one core and from 22.5 to 27.0 GB/s on two with a prefetch 2 KB ahead (1-8 KB tried);
   in a whole decoding step of the GPT-2 shape (blocks fused, 48 products of 0.6-9 MB), 4 KB ahead took the int8 step
   from 3.5-4.4 to 3.1-3.5 ms and left float32's as it was (19.4-20.3 ms); 8 KB was no better, 16 KB worse. A
   prefetch past the end of the weights is harmless: it never faults. */
#define PREFETCH_AHEAD 4096
static inline void prefetch(const void *p) { __builtin_prefetch((const char *)p + PREFETCH_AHEAD, 0, 3); }

/* IEEE half -> float (the int4 scales are stored in float16) */
static inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    union { uint32_t u; float f; } out;
    if (exponent == 0) {  /* zero or subnormal: mantissa * 2^-24 */
        out.f = (float)mantissa * 5.9604644775390625e-8f;
        out.u |= sign;
    } else {
        out.u = sign | ((exponent == 31 ? 255 : exponent + 112) << 23) | (mantissa << 13);
    }
    return out.f;
#endif
}

/* n float16 values to floats, 16 or 8 at a time where the CPU converts vectors: a row's int4 scales. At groups of
   32, converting them one by one held one core to 14 G weights/s, 20 this way (Xeon, AVX-512). */
static inline void halves_to_floats(const uint16_t *h, int n, float *out) {
    int i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
#elif defined(__F16C__) && defined(__AVX2__)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < n; i++) out[i] = half_to_float(h[i]);
}

static inline float lo4(int8_t b) { return (float)((int8_t)(b << 4) >> 4); }  /* low nibble, two's complement */
static inline float hi4(int8_t b) { return (float)(b >> 4); }                  /* high nibble */

/* -- vectors of V floats, and one output: a row of weights against one row of x -------------------------------- */

#if defined(__AVX512F__)
#define V 16
typedef __m512 vec;
static inline vec vzero(void) { return _mm512_setzero_ps(); }
static inline vec vload(const float *x) { return _mm512_loadu_ps(x); }
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
static inline float vsum(vec a) { return _mm512_reduce_add_ps(a); }
static inline vec i8_floats(const int8_t *q) {  /* V int8 codes -> V floats */
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
}
#elif defined(__AVX2__)
#define V 8
typedef __m256 vec;
static inline vec vzero(void) { return _mm256_setzero_ps(); }
static inline vec vload(const float *x) { return _mm256_loadu_ps(x); }
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
static inline float vsum(vec a) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
static inline vec i8_floats(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}
#else
#define V 1
#endif

/* float32 or int8 weights: `floats(w, k)` gives V weights from column k as floats, `one(w, k)` one of them. Four
   accumulators of V lanes each, summed at the end. Inlined into each caller, so the loaders are inlined too. */
#if V > 1
typedef vec (*vector_loader)(const void *w, int k);
#endif
static inline __attribute__((always_inline)) float dot(const void *w, int bytes, const float *x, int K,
#if V > 1
                                                       vector_loader floats,
#endif
                                                       float (*one)(const void *w, int k)) {
    int k = 0;
    float s = 0.0f;
    (void)bytes;  /* plain C: no prefetching */
#if V > 1
    vec a0 = vzero(), a1 = a0, a2 = a0, a3 = a0;
    for (; k + 4 * V <= K; k += 4 * V) {
        for (int line = 0; line < 4 * V * bytes; line += 64) prefetch((const char *)w + (size_t)k * bytes + line);
        a0 = vfma(floats(w, k), vload(x + k), a0);
        a1 = vfma(floats(w, k + V), vload(x + k + V), a1);
        a2 = vfma(floats(w, k + 2 * V), vload(x + k + 2 * V), a2);
        a3 = vfma(floats(w, k + 3 * V), vload(x + k + 3 * V), a3);
    }
    s = vsum(vadd(vadd(a0, a1), vadd(a2, a3)));
#endif
    for (; k < K; k++) s += one(w, k) * x[k];
    return s;
}

static inline float f32_one(const void *w, int k) { return ((const float *)w)[k]; }
static inline float i8_one(const void *w, int k) { return (float)((const int8_t *)w)[k]; }
#if V > 1
static inline vec f32_floats(const void *w, int k) { return vload((const float *)w + k); }
static inline vec i8_floats_at(const void *w, int k) { return i8_floats((const int8_t *)w + k); }
static float dot_f32(const float *w, const float *x, int K) { return dot(w, 4, x, K, f32_floats, f32_one); }
static float dot_i8(const int8_t *q, const float *x, int K) { return dot(q, 1, x, K, i8_floats_at, i8_one); }
#else
static float dot_f32(const float *w, const float *x, int K) { return dot(w, 4, x, K, f32_one); }
static float dot_i8(const int8_t *q, const float *x, int K) { return dot(q, 1, x, K, i8_one); }
#endif

/* int4: byte i of a row holds column 2i in its low nibble and 2i+1 in its high one, so 32-bit lane l of a block of
   V lanes (4 V bytes, 8 V columns) holds columns 8l .. 8l+7 in its nibbles 0 .. 7. Nibble j of every lane is then
   one vector op away (a shift), and multiplies x at columns 8l + j: `xt` is x with each block of 8 V columns
   transposed from (V, 8) to (8, V). s: one scale per group of G columns; G a multiple of 8 keeps a lane (8
   columns) in one group. */
static float dot_i4(const int8_t *p, const float *xt, const float *s, int K, int G, int whole) {
    float total = 0.0f;
    int k = 0;
    (void)whole;  /* plain C: every column goes through the loop at the end */
#if defined(__AVX512F__)
    /* vpermps reads the low 4 bits of each lane: lut[i] = nibble i read as a signed 4-bit number */
    const __m512 lut = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1);
    const int per_block = 8 * V / G;  /* groups in a block of 128 columns, when G < 128 */
    const __m512i lane_group = _mm512_srli_epi32(_mm512_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88,
                                                                     96, 104, 112, 120), __builtin_ctz(G));
    __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;
    for (; k < whole; k += 8 * V) {
        prefetch(p + k / 2);
        const __m512i v = _mm512_loadu_si512((const void *)(p + k / 2));
        const float *x = xt + k;
        __m512 t0 = _mm512_mul_ps(_mm512_permutexvar_ps(v, lut), _mm512_loadu_ps(x));
        __m512 t1 = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut), _mm512_loadu_ps(x + V));
        t0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 8), lut), _mm512_loadu_ps(x + 2 * V), t0);
        t1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 12), lut), _mm512_loadu_ps(x + 3 * V), t1);
        t0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 16), lut), _mm512_loadu_ps(x + 4 * V), t0);
        t1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 20), lut), _mm512_loadu_ps(x + 5 * V), t1);
        t0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 24), lut), _mm512_loadu_ps(x + 6 * V), t0);
        t1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 28), lut), _mm512_loadu_ps(x + 7 * V), t1);
        const __m512 sc = per_block > 1
            ? _mm512_permutexvar_ps(lane_group, _mm512_loadu_ps(s + k / G))
            : _mm512_set1_ps(s[k / G]);
        acc0 = _mm512_fmadd_ps(t0, sc, acc0);
        acc1 = _mm512_fmadd_ps(t1, sc, acc1);
    }
    total = vsum(_mm512_add_ps(acc0, acc1));
#elif defined(__AVX2__)
    const int per_block = 8 * V / G;  /* groups in a block of 64 columns, when G < 64 */
    const __m256i lane_group = _mm256_srli_epi32(_mm256_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56), __builtin_ctz(G));
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    for (; k < whole; k += 8 * V) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(p + k / 2));
        const float *x = xt + k;
        __m256 t0 = _mm256_setzero_ps(), t1 = t0;
        /* nibble j, sign-extended: shift it to the top of the lane, then arithmetically back down */
#define NIB(j) _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 28 - 4 * (j)), 28))
        t0 = _mm256_fmadd_ps(NIB(0), _mm256_loadu_ps(x), t0);
        t1 = _mm256_fmadd_ps(NIB(1), _mm256_loadu_ps(x + V), t1);
        t0 = _mm256_fmadd_ps(NIB(2), _mm256_loadu_ps(x + 2 * V), t0);
        t1 = _mm256_fmadd_ps(NIB(3), _mm256_loadu_ps(x + 3 * V), t1);
        t0 = _mm256_fmadd_ps(NIB(4), _mm256_loadu_ps(x + 4 * V), t0);
        t1 = _mm256_fmadd_ps(NIB(5), _mm256_loadu_ps(x + 5 * V), t1);
        t0 = _mm256_fmadd_ps(NIB(6), _mm256_loadu_ps(x + 6 * V), t0);
        t1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srai_epi32(v, 28)), _mm256_loadu_ps(x + 7 * V), t1);
#undef NIB
        const __m256 sc = per_block > 1 ? _mm256_permutevar8x32_ps(_mm256_loadu_ps(s + k / G), lane_group)
                                        : _mm256_set1_ps(s[k / G]);
        acc0 = _mm256_fmadd_ps(t0, sc, acc0);
        acc1 = _mm256_fmadd_ps(t1, sc, acc1);
    }
    total = vsum(_mm256_add_ps(acc0, acc1));
#endif
    /* the columns after the last whole block (all of them without vector instructions): xt is x there */
    for (; k < K; k += 2) {
        const int8_t b = p[k / 2];
        total += s[k / G] * lo4(b) * xt[k] + s[(k + 1) / G] * hi4(b) * xt[k + 1];
    }
    return total;
}

/* the width of the vectors this build uses, in floats: 16 (AVX-512), 8 (AVX2) or 1 (plain C) */
int vector_width(void) { return V; }

/* -- the products: N outputs split among the threads ---------------------------------------------------------- */

/* A weight matrix as Python hands it over (llmcourse/native.py, class Matrix): W (N, K) in one of three formats. */
enum { FLOAT32 = 0, INT8 = 1, INT4 = 2 };
typedef struct {
    int kind, N, K, G;     /* format, outputs, inputs, int4 group size */
    const void *w;         /* float32 (N, K) | int8 codes (N, K) | int4 codes packed two per byte (N, K / 2) */
    const void *scale;     /* int8: float32 (N,) | int4: float16 (N, K / G) | float32: NULL */
    const float *bias;     /* (N,) or NULL */
} matrix;

/* x (M rows of K) made ready for a matrix's kernel by one thread, before the threads share out the rows of W: int8
   with VNNI reads x as 16-bit parts, int4 reads it transposed block by block. `scratch`: M K + M floats. */
typedef struct {
    const float *x;
    int M, vnni;           /* vnni: the parts are there (x all finite) */
    int16_t *parts;        /* int8: row m's high parts at 2 m K, low parts at (2 m + 1) K */
    float *sx, *xt;        /* int8: row m's scale of the parts; int4: x transposed */
} input;

/* How a product's output is written: y = x W^T + b, or added to y (a residual connection). */
enum { STORE = 0, ADD = 1 };
static inline void emit(float *y, float value, int how) { *y = how == ADD ? *y + value : value; }

/* Each thread reads its rows of W as two streams at once: row i and row i + half, half the matrix apart. A core keeps
   more cache lines in flight from memory for two sequential streams than for one. Measured on a 2-core Xeon
   (AVX-512 VNNI), int8 weights streamed from memory (256 MB): one core 10.4 GB/s row after row, 13.3 GB/s in two
   streams, 14.8 GB/s for a loop that only reads; two cores 19.6, 24.5 and 24.5. The loop shares the rows among the
   threads of the parallel region it is called in (one thread outside of one). */
#define FOR_EACH_ROW_IN_TWO_STREAMS(n, N)                                                                         \
    _Pragma("omp for schedule(static)")                                                                          \
    for (int i_ = 0; i_ < ((N) + 1) / 2; i_++)                                                                   \
        for (int n = i_; n < (N); n += ((N) + 1) / 2)

static void product_f32(const matrix *A, const input *in, float *y, int how) {
    const int N = A->N, K = A->K;
    const float *W = A->w;
    FOR_EACH_ROW_IN_TWO_STREAMS(n, N)
        for (int m = 0; m < in->M; m++)
            emit(&y[(size_t)m * N + n], dot_f32(W + (size_t)n * K, in->x + (size_t)m * K, K)
                                        + (A->bias ? A->bias[n] : 0.0f), how);
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* int8 weights times x without converting a single weight to float: x (one row) is written as 16-bit integers in two
   parts, x = sx (hi + lo / 32768) with |hi| <= 32767 and |lo| <= 16384, exact to 5e-10 of max |x|, and vpdpwssd
   multiplies 32 weights (sign-extended to 16 bits) by 32 parts and adds them in pairs to 16 int32 sums. The sums
   are moved to float every 4096 columns, before they could overflow (127 x 32767 x 2 x 128 < 2^31). */
#define VNNI_CHUNK 4096
#define HAVE_VNNI 1
static int split_x(const float *x, int K, int16_t *hi, int16_t *lo, float *sx) {  /* 0: x is not all finite */
    float big = 0.0f;
    for (int k = 0; k < K; k++) {
        if (!isfinite(x[k])) return 0;
        big = fabsf(x[k]) > big ? fabsf(x[k]) : big;
    }
    *sx = big > 0.0f ? big / 32767.0f : 1.0f;
    for (int k = 0; k < K; k++) {
        const float q = x[k] / *sx, h = nearbyintf(q);
        hi[k] = (int16_t)h;
        lo[k] = (int16_t)nearbyintf((q - h) * 32768.0f);
    }
    return 1;
}

/* Two rows of codes, q0 and q1 (one from each stream), against x's parts, sharing every load of the parts; the int32
   sums go to float lanes after each chunk, and each row's lanes are added up once at the end. */
static void dot2_i8_vnni(const int8_t *q0, const int8_t *q1, const int16_t *hi, const int16_t *lo, int K,
                         float *out0, float *out1) {
    const __m512 low_weight = _mm512_set1_ps(1.0f / 32768.0f);
    __m512 f0 = _mm512_setzero_ps(), f1 = f0;
    int k = 0;
    while (k + 32 <= K) {
        const int end = k + VNNI_CHUNK < K ? k + VNNI_CHUNK : K;
        __m512i h0 = _mm512_setzero_si512(), l0 = h0, h1 = h0, l1 = h0, h0b = h0, l0b = h0, h1b = h0, l1b = h0;
        for (; k + 64 <= end; k += 64) {
            prefetch(q0 + k), prefetch(q1 + k);
            const __m512i xh = _mm512_loadu_si512(hi + k), xl = _mm512_loadu_si512(lo + k);
            const __m512i xhb = _mm512_loadu_si512(hi + k + 32), xlb = _mm512_loadu_si512(lo + k + 32);
            const __m512i a = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q0 + k)));
            const __m512i b = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q1 + k)));
            const __m512i ab = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q0 + k + 32)));
            const __m512i bb = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q1 + k + 32)));
            h0 = _mm512_dpwssd_epi32(h0, a, xh), l0 = _mm512_dpwssd_epi32(l0, a, xl);
            h1 = _mm512_dpwssd_epi32(h1, b, xh), l1 = _mm512_dpwssd_epi32(l1, b, xl);
            h0b = _mm512_dpwssd_epi32(h0b, ab, xhb), l0b = _mm512_dpwssd_epi32(l0b, ab, xlb);
            h1b = _mm512_dpwssd_epi32(h1b, bb, xhb), l1b = _mm512_dpwssd_epi32(l1b, bb, xlb);
        }
        for (; k + 32 <= end; k += 32) {
            const __m512i xh = _mm512_loadu_si512(hi + k), xl = _mm512_loadu_si512(lo + k);
            const __m512i a = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q0 + k)));
            const __m512i b = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(q1 + k)));
            h0 = _mm512_dpwssd_epi32(h0, a, xh), l0 = _mm512_dpwssd_epi32(l0, a, xl);
            h1 = _mm512_dpwssd_epi32(h1, b, xh), l1 = _mm512_dpwssd_epi32(l1, b, xl);
        }
        f0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(l0, l0b)), low_weight,
                             _mm512_add_ps(f0, _mm512_cvtepi32_ps(_mm512_add_epi32(h0, h0b))));
        f1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(l1, l1b)), low_weight,
                             _mm512_add_ps(f1, _mm512_cvtepi32_ps(_mm512_add_epi32(h1, h1b))));
    }
    float t0 = _mm512_reduce_add_ps(f0), t1 = _mm512_reduce_add_ps(f1);
    for (; k < K; k++) {
        const float xk = (float)hi[k] + (float)lo[k] / 32768.0f;
        t0 += (float)q0[k] * xk, t1 += (float)q1[k] * xk;
    }
    *out0 = t0, *out1 = t1;
}
#else
#define HAVE_VNNI 0
#endif

static void product_int8(const matrix *A, const input *in, float *y, int how) {
    const int N = A->N, K = A->K;
    const int8_t *Q = A->w;
    const float *scale = A->scale, *bias = A->bias;
#if HAVE_VNNI
    if (in->vnni) {
        const int half = (N + 1) / 2;  /* the two streams: row i with row i + half (N odd: the middle row alone) */
        #pragma omp for schedule(static)
        for (int i = 0; i < half; i++) {
            const int j = i + half < N ? i + half : i;
            for (int m = 0; m < in->M; m++) {
                float a, b;
                dot2_i8_vnni(Q + (size_t)i * K, Q + (size_t)j * K, in->parts + (size_t)2 * m * K,
                             in->parts + (size_t)(2 * m + 1) * K, K, &a, &b);
                emit(&y[(size_t)m * N + i], a * in->sx[m] * scale[i] + (bias ? bias[i] : 0.0f), how);
                if (j != i) emit(&y[(size_t)m * N + j], b * in->sx[m] * scale[j] + (bias ? bias[j] : 0.0f), how);
            }
        }
        return;
    }
#endif
    /* no VNNI, or x holds a NaN or an infinity: the float path carries it through */
    FOR_EACH_ROW_IN_TWO_STREAMS(n, N)
        for (int m = 0; m < in->M; m++)
            emit(&y[(size_t)m * N + n], dot_i8(Q + (size_t)n * K, in->x + (size_t)m * K, K) * scale[n]
                                        + (bias ? bias[n] : 0.0f), how);
}

/* Whether dot_i4's vector loop can run (a lane's 8 columns in one group, found by a shift), and over how many
   columns. */
static int int4_whole(const matrix *A) {
    const int G = A->G, fast = G % 8 == 0 && (G & (G - 1)) == 0;
    return fast ? A->K / (8 * V) * (8 * V) : 0;
}

/* each row's float16 scales are read into floats once (padded, so that a vector load past the row's last group
   stays in the buffer) */
static void product_int4(const matrix *A, const input *in, float *y, int how) {
    const int N = A->N, K = A->K, G = A->G, groups = K / G, whole = int4_whole(A);
    const uint8_t *P = A->w;
    const uint16_t *scale = A->scale;
    FOR_EACH_ROW_IN_TWO_STREAMS(n, N) {
        float s[groups + 16];
        halves_to_floats(scale + (size_t)n * groups, groups, s);
        memset(s + groups, 0, 16 * sizeof(float));
        for (int m = 0; m < in->M; m++)
            emit(&y[(size_t)m * N + n], dot_i4((const int8_t *)(P + (size_t)n * (K / 2)), in->xt + (size_t)m * K, s,
                                               K, G, whole) + (A->bias ? A->bias[n] : 0.0f), how);
    }
}

/* x made ready for A's kernel (by one thread): see `input` */
static void prepare_input(const matrix *A, const float *x, int M, float *scratch, input *in) {
    const int K = A->K;
    in->x = x, in->M = M, in->vnni = 0;
    if (A->kind == INT8 && HAVE_VNNI) {
        in->parts = (int16_t *)scratch, in->sx = scratch + (size_t)M * K;  /* 2 M K int16 = M K floats */
        in->vnni = 1;
#if HAVE_VNNI
        for (int m = 0; in->vnni && m < M; m++)
            in->vnni = split_x(x + (size_t)m * K, K, in->parts + (size_t)2 * m * K,
                               in->parts + (size_t)(2 * m + 1) * K, in->sx + m);
#endif
    } else if (A->kind == INT4) {
        const int whole = int4_whole(A);
        in->xt = scratch;
        for (int m = 0; m < M; m++) {
            const float *xm = x + (size_t)m * K;
            float *tm = in->xt + (size_t)m * K;
            for (int b = 0; b < whole; b += 8 * V)
                for (int l = 0; l < V; l++)
                    for (int j = 0; j < 8; j++) tm[b + j * V + l] = xm[b + 8 * l + j];
            for (int k = whole; k < K; k++) tm[k] = xm[k];
        }
    }
}

/* y (M, N) = x (M, K) @ W^T + bias, or added to y: every thread of the region calls it */
static void product(const matrix *A, const input *in, float *y, int how) {
    if (A->kind == INT8) product_int8(A, in, y, how);
    else if (A->kind == INT4) product_int4(A, in, y, how);
    else product_f32(A, in, y, how);
}

/* y (M, N) = x (M, K) @ W^T + bias for any of the formats; scratch: M K + M floats for int8 and int4 */
void linear(const matrix *A, const float *x, int M, float *scratch, float *y) {
    input in;
    #pragma omp parallel
    {
        #pragma omp single
        prepare_input(A, x, M, scratch, &in);
        product(A, &in, y, STORE);
    }
}

/* -- attention of a few new tokens over their cache (decoding at batch 1) -------------------------------------- */

/* qkv: T new tokens' queries, keys and values (T rows of 3 H D floats: q, k, v, each head after head); keys and
   values: the caches of one layer, (H, max_len, D), holding positions 0..pos-1. Writes the new keys and values at
   positions pos..pos+T-1, then y (T rows of H D floats) = for each head, new token t attends causally:
   softmax(q_t . keys[0..pos+t] / sqrt(D)) values[0..pos+t]. What PyTorch's scaled_dot_product_attention computes,
   in one call instead of the dozen small PyTorch operations (split, cache writes, mask, attention, transpose) that
   each cost a few microseconds, more when the weights streamed through the caches just before. The heads are
   shared among the threads of the region it is called in. */
static void attend(const float *qkv, int T, int H, int D, float *keys, float *values, int max_len, int pos,
                   float *y) {
    const int C = H * D;
    const float scale = 1.0f / sqrtf((float)D);
    #pragma omp for schedule(static)
    for (int h = 0; h < H; h++) {
        float *Kh = keys + (size_t)h * max_len * D, *Vh = values + (size_t)h * max_len * D;
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++) {
                Kh[(size_t)(pos + t) * D + d] = qkv[(size_t)t * 3 * C + C + h * D + d];
                Vh[(size_t)(pos + t) * D + d] = qkv[(size_t)t * 3 * C + 2 * C + h * D + d];
            }
        float *p = malloc(sizeof(float) * (size_t)(pos + T));
        for (int t = 0; t < T; t++) {
            const float *q = qkv + (size_t)t * 3 * C + (size_t)h * D;
            float *yt = y + (size_t)t * C + (size_t)h * D, top = -INFINITY, total = 0.0f;
            const int seen = pos + t + 1;  /* positions this token attends to */
            if (!p) {  /* out of memory: NaN rather than a wrong number */
                for (int d = 0; d < D; d++) yt[d] = NAN;
                continue;
            }
            for (int j = 0; j < seen; j++) {
                p[j] = dot_f32(Kh + (size_t)j * D, q, D) * scale;
                top = p[j] > top ? p[j] : top;
            }
            for (int j = 0; j < seen; j++) total += (p[j] = expf(p[j] - top));
            for (int d = 0; d < D; d++) yt[d] = 0.0f;
            for (int j = 0; j < seen; j++) {
                const float w = p[j] / total, *vj = Vh + (size_t)j * D;
                for (int d = 0; d < D; d++) yt[d] += w * vj[d];
            }
        }
        free(p);
    }
}

void attend_cached(const float *qkv, int T, int H, int D, float *keys, float *values, int max_len, int pos, float *y) {
    #pragma omp parallel
    attend(qkv, T, H, D, keys, values, max_len, pos, y);
}

/* -- a whole GPT-2 block for a decoding step ----------------------------------------------------------------------- */

/* y (T, C) = LayerNorm of each row of x: (x - mean) / sqrt(variance + eps) * w + b (b may be NULL) */
static void layer_norm(const float *x, int T, int C, const float *w, const float *b, float eps, float *y) {
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *yt = y + (size_t)t * C, mean = 0.0f, var = 0.0f;
        for (int c = 0; c < C; c++) mean += xt[c];
        mean /= (float)C;
        for (int c = 0; c < C; c++) var += (xt[c] - mean) * (xt[c] - mean);
        const float rstd = 1.0f / sqrtf(var / (float)C + eps);
        for (int c = 0; c < C; c++) yt[c] = (xt[c] - mean) * rstd * w[c] + (b ? b[c] : 0.0f);
    }
}

/* GPT-2's GELU (the tanh approximation), 0.5 v (1 + tanh(u)) with u = sqrt(2 / pi) (v + 0.044715 v^3), written as
   v / (1 + exp(-2 u)) (the same function: 1 + tanh(u) = 2 / (1 + exp(-2 u))), in place on n values shared among the
   threads of the region. exp on vectors: 2^i e^r with r = x - i ln 2 in [-ln 2 / 2, ln 2 / 2] and e^r by its Taylor
   series to r^6 (relative error below 2e-7). One scalar tanhf per value held this step at ~12 ns per value. */
#if V > 1
#if V == 16
static inline vec vmul(vec a, vec b) { return _mm512_mul_ps(a, b); }
static inline vec vset(float a) { return _mm512_set1_ps(a); }
static inline vec vclamp(vec a, float low, float high) {
    return _mm512_min_ps(_mm512_max_ps(a, vset(low)), vset(high));
}
static inline vec vdiv(vec a, vec b) { return _mm512_div_ps(a, b); }
static inline vec vround(vec a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vec vtimes_pow2(vec a, vec i) { return _mm512_scalef_ps(a, i); }
static inline void vstore(float *y, vec a) { _mm512_storeu_ps(y, a); }
#else
static inline vec vmul(vec a, vec b) { return _mm256_mul_ps(a, b); }
static inline vec vset(float a) { return _mm256_set1_ps(a); }
static inline vec vclamp(vec a, float low, float high) {
    return _mm256_min_ps(_mm256_max_ps(a, vset(low)), vset(high));
}
static inline vec vdiv(vec a, vec b) { return _mm256_div_ps(a, b); }
static inline vec vround(vec a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vec vtimes_pow2(vec a, vec i) {  /* i in [-126, 127]: 2^i built in the exponent bits */
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(i), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(a, _mm256_castsi256_ps(bits));
}
static inline void vstore(float *y, vec a) { _mm256_storeu_ps(y, a); }
#endif
static inline vec vexp(vec x) {  /* e^x for x in [-87, 88] */
    const vec i = vround(vmul(x, vset(1.44269504088896341f)));
    vec r = vfma(i, vset(-0.693145751953125f), x);  /* ln 2 in two parts: r exact to float precision */
    r = vfma(i, vset(-1.428606765330187e-06f), r);
    vec p = vfma(vset(1.0f / 720), r, vset(1.0f / 120));
    p = vfma(vfma(p, r, vset(1.0f / 24)), r, vset(1.0f / 6));  /* Horner: 1 + r + r^2/2 + ... + r^6/720 */
    p = vfma(vfma(vfma(p, r, vset(0.5f)), r, vset(1.0f)), r, vset(1.0f));
    return vtimes_pow2(p, i);
}
#endif

static void gelu_tanh(float *y, int n) {
    int start = 0;
#if V > 1
    #pragma omp for schedule(static)
    for (int b = 0; b < n / V; b++) {
        const vec v = vload(y + (size_t)b * V);
        const vec u = vmul(vset(0.7978845608028654f), vfma(vmul(vset(0.044715f), vmul(v, v)), v, v));
        vstore(y + (size_t)b * V, vdiv(v, vadd(vset(1.0f), vexp(vclamp(vmul(vset(-2.0f), u), -87.0f, 88.0f)))));
    }
    start = n / V * V;
#endif
    #pragma omp for schedule(static)
    for (int k = start; k < n; k++) {
        const float v = y[k], u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        y[k] = v / (1.0f + expf(fminf(fmaxf(-2.0f * u, -87.0f), 88.0f)));
    }
}

/* A GPT-2 block's weights, as Python hands them over (llmcourse/native.py, class Block): width C, H heads, the two
   LayerNorms (biases may be NULL) and the four products in any of the formats: attn (3C x C), proj (C x C),
   fc (F x C), out (C x F). */
typedef struct {
    int C, H;
    float eps;
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    matrix attn, proj, fc, out;
} block;

/* A decoding step of n GPT-2 blocks (pre-LayerNorm) for T <= 8 new tokens at batch 1, in one parallel region: for
   each block, y += proj(attention(ln1(y))), then y += out(gelu(fc(ln2(y)))), starting from y = x, the attention
   over block l's KV-cache (keys[l], values[l]: (H, max_len, D)) as `attend` computes it, the new keys and values
   written at pos..pos+T-1. Per block that replaces ~10 PyTorch operations and 5 calls from Python; each cost a few
   microseconds warm and tens after the weights streamed through the CPU's caches. x, y: (T, C). work: T (5 C + F)
   floats for the activations, then scratch for the int8 and int4 kernels, T (max(C, F) + 1) (F: the widest fc). */
void gpt_blocks_step(const block *blocks, int n, const float *x, int T, float *const *keys, float *const *values,
                     int max_len, int pos, float *work, float *y) {
    int F = 0;
    for (int l = 0; l < n; l++) F = blocks[l].fc.N > F ? blocks[l].fc.N : F;
    const int C = blocks[0].C;
    float *h = work, *qkv = h + (size_t)T * C, *att = qkv + (size_t)3 * T * C, *u = att + (size_t)T * C;
    float *scratch = u + (size_t)T * F;
    input in;
    memcpy(y, x, sizeof(float) * (size_t)T * C);
    #pragma omp parallel
    for (int l = 0; l < n; l++) {
        const block *b = blocks + l;
        #pragma omp single
        {
            layer_norm(y, T, C, b->ln1_w, b->ln1_b, b->eps, h);
            prepare_input(&b->attn, h, T, scratch, &in);
        }
        product(&b->attn, &in, qkv, STORE);
        attend(qkv, T, b->H, C / b->H, keys[l], values[l], max_len, pos, att);
        #pragma omp single
        prepare_input(&b->proj, att, T, scratch, &in);
        product(&b->proj, &in, y, ADD);
        #pragma omp single
        {
            layer_norm(y, T, C, b->ln2_w, b->ln2_b, b->eps, h);
            prepare_input(&b->fc, h, T, scratch, &in);
        }
        product(&b->fc, &in, u, STORE);
        gelu_tanh(u, T * b->fc.N);
        #pragma omp single
        prepare_input(&b->out, u, T, scratch, &in);
        product(&b->out, &in, y, ADD);
    }
}
