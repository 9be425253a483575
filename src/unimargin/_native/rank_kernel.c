/* Exact Mann-Whitney counts of every score against a sorted set of positives, one read of
 * the scores (unimargin.metrics.uniform.separability_auc, SPEC §3.5; rank_kernel.py).
 *
 *   rank_count_{f32,f64}(...) = sum over all scores x of  2*#{positives > x} + #{positives == x}
 *
 * The positives come as their sorted distinct values d[0..nd) and c[k] = #{positives < d[k]}
 * (c[nd] = npos). For a score x with j = #{d < x} and e = [d[j] == x]:
 *   2*#{pos > x} + #{pos == x} = 2*npos - c[j] - c[j + e].
 *
 * j comes from a monotone bucket map: bucket(x) = 0 for t < 0, nb + 1 for t >= nb, else
 * trunc(t) + 1, with t = (x - pmin) * scale evaluated in the scores' own precision. Rounded
 * subtraction and multiplication by a positive constant are monotone, so x < y implies
 * bucket(x) <= bucket(y): every distinct value in a lower bucket is < x, every one in a higher
 * bucket is > x, and only the few values in x's own bucket (start[b] .. start[b+1]) are
 * compared exactly. Exactness needs nothing else (no rounding argument), only monotonicity.
 *
 * Locality: the positives (4-8 bytes each) and the bucket table do not fit in L2 for 1e6
 * positives, and random reads beyond L2 cost 3-10x more per score than the whole
 * uniform_accuracy pass. So the scores are first scattered by range (a group of 2^rshift
 * consecutive buckets, ~512 ranges) into per-range buffers of `cap` scores; a full buffer is
 * ranked against its range's slice of the table and of the positives only, which stays in
 * L1/L2. The scatter is write-combined in software: each range has one 64-byte staging line
 * (512 lines = 32 KB: L1), and a full line goes to the range's buffer with one streaming
 * (non-temporal) store, so the buffers cost no read-for-ownership misses (a plain scatter
 * into 1025 buffers cost ~5 ns per score, mostly those misses). Buckets of a block of
 * scores are computed 16 (8) at a time. Scores below the smallest positive add 2*npos,
 * scores above the largest add 0, with no lookup at all.
 *
 * Threads: the scores are split into `threads` contiguous parts (pthreads), each with its
 * own buffers and int64 sum; the table and the positives are shared read-only.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define BLK 256           /* scores whose buckets are computed at once */
#define LINE 64           /* staging line per range: one cache line */
#define MAX_THREADS 64
#define LANES 32          /* distinct values compared at once; a longer bucket is searched */
#define RECORD_SEARCH 0xFFFFFFFFu /* rank_records: a bucket of >= 2 distinct values */

#define DEFINE_KERNEL(T, SUF)                                                                     \
static inline long bucket_##SUF(T x, T pmin, T scale, long nb) {                                  \
    T t = (x - pmin) * scale;                                                                     \
    if (!(t >= 0)) return 0;                                                                      \
    if (t >= (T)nb) return nb + 1;                                                                \
    return (long)t + 1;                                                                           \
}                                                                                                 \
                                                                                                  \
/* start[b] = first k with bucket(d[k]) >= b, for b in [0, nb + 2]; start[nb + 2] = nd */         \
void rank_build_##SUF(const T *d, long nd, T pmin, T scale, long nb, uint32_t *start) {           \
    long k = 0;                                                                                   \
    for (long b = 0; b <= nb + 2; b++) {                                                          \
        while (k < nd && bucket_##SUF(d[k], pmin, scale, nb) < b) k++;                            \
        start[b] = (uint32_t)k;                                                                   \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
typedef struct {                                                                                  \
    const T *x; long begin, end; const T *d; const uint32_t *c; const uint32_t *start;            \
    long nd, npos, nb, cap; T pmin, pmax, scale; int rshift, ties, long_buckets; int64_t sum; int failed;          \
    const T *rv; const uint32_t *rlt, *rgt;                                                       \
} job_##SUF;                                                                                      \
                                                                                                  \
/* Per-bucket records for the vector ranking: a bucket b with start[b] = s holds m = start[b + 1] \
 * - s distinct values. m = 0: every x in it counts lt = 2 npos - 2 c[s] (= gt); m = 1, value    \
 * v = d[s]: x < v counts lt, x > v counts gt = 2 npos - 2 c[s + 1], x = v counts lt/2 + gt/2;    \
 * m >= 2: gt = RECORD_SEARCH (odd, so never a count: counts are even), ranked by rank_one. */    \
void rank_records_##SUF(const T *d, const uint32_t *c, const uint32_t *start, long nb, long npos,  \
                        T *rv, uint32_t *rlt, uint32_t *rgt) {                                    \
    for (long b = 0; b <= nb + 1; b++) {                                                          \
        const uint32_t s = start[b], m = start[b + 1] - s;                                        \
        rlt[b] = (uint32_t)(2 * npos) - 2 * c[s];                                                 \
        rv[b] = m == 1 ? d[s] : (T)0;                                                             \
        rgt[b] = m == 0 ? rlt[b] : m == 1 ? (uint32_t)(2 * npos) - 2 * c[s + 1] : RECORD_SEARCH;  \
    }                                                                                             \
}                                                                                                 \
                                                                                                  \
/* 2*#{pos > x} + #{pos == x} for one score, from the bucket's sorted distinct values */         \
static inline int64_t rank_one_##SUF(const job_##SUF *jb, T x) {                                  \
    const long b = bucket_##SUF(x, jb->pmin, jb->scale, jb->nb);                                  \
    const uint32_t lo = jb->start[b], m = jb->start[b + 1] - lo;                                  \
    const T *p = jb->d + lo;                                                                      \
    uint32_t j = 0, e;                                                                            \
    if (m <= LANES) { while (j < m && p[j] < x) j++; }                                            \
    else { uint32_t z = m; while (j < z) { const uint32_t h = j + ((z - j) >> 1);                 \
                                           if (p[h] < x) j = h + 1; else z = h; } }               \
    e = j < m && p[j] == x;                                                                       \
    if (jb->ties) return 2 * (int64_t)jb->npos - jb->c[lo + j] - jb->c[lo + j + e];               \
    return 2 * (int64_t)jb->npos - 2 * (int64_t)(lo + j) - e;                                     \
}                                                                                                 \
                                                                                                  \
/* out[k] = bucket(xs[k]) for a block of scores (the same arithmetic 16 or 8 at a time) */      \
static void buckets_##SUF(const T *xs, long n, T pmin, T scale, long nb, uint32_t *out) {         \
    long k = 0;                                                                                   \
    VECTOR_BUCKETS_##SUF                                                                          \
    for (; k < n; k++) out[k] = bucket_##SUF(xs[k], pmin, scale, nb);                             \
}                                                                                                 \
                                                                                                  \
/* sum over xs[0..n) of 2*npos - c[j] - c[j + e] (any x: bucket 0 and nb + 1 are exact too) */ \
static int64_t rank_block_##SUF(const job_##SUF *jb, const T *xs, long n) {                        \
    const T *d = jb->d; const uint32_t *c = jb->c, *start = jb->start;                            \
    const T pmin = jb->pmin, scale = jb->scale; const long nb = jb->nb;                           \
    int64_t sub = 0;                                                                              \
    (void)d; (void)c; (void)start; (void)pmin; (void)scale; (void)nb;                             \
    long i = 0;                                                                                   \
    RECORD_BLOCK_##SUF                                                                            \
    VECTOR_BLOCK_##SUF                                                                            \
    for (; i < n; i++) sub += 2 * (int64_t)jb->npos - rank_one_##SUF(jb, xs[i]);                  \
    return 2 * (int64_t)jb->npos * n - sub;                                                       \
}                                                                                                 \
                                                                                                  \
static void *rank_run_##SUF(void *arg) {                                                          \
    job_##SUF *jb = (job_##SUF *)arg;                                                             \
    const long nr = ((jb->nb + 2) >> jb->rshift) + 1;                                             \
    if (nr == 1) { jb->sum = rank_block_##SUF(jb, jb->x + jb->begin, jb->end - jb->begin); return NULL; } \
    enum { SW = LINE / sizeof(T) };                                                               \
    const long cap = jb->cap;                                                                     \
    T *buf = NULL, *stage = NULL;                                                                 \
    if (posix_memalign((void **)&buf, LINE, sizeof(T) * cap * nr)) buf = NULL;                    \
    if (posix_memalign((void **)&stage, LINE, (size_t)LINE * nr)) stage = NULL;                   \
    long *len = (long *)calloc(nr, sizeof(long));                                                 \
    uint32_t *sc = (uint32_t *)calloc(nr, sizeof(uint32_t));                                      \
    if (!buf || !len || !stage || !sc) { free(buf); free(len); free(stage); free(sc); jb->failed = 1; return NULL; } \
    const T pmin = jb->pmin, scale = jb->scale; const long nb = jb->nb;                           \
    const int rshift = jb->rshift;                                                                \
    int64_t sum = 0, below = 0;                                                                   \
    uint32_t idx[BLK];                                                                            \
    for (long i0 = jb->begin; i0 < jb->end; i0 += BLK) {                                          \
        const long n = jb->end - i0 < BLK ? jb->end - i0 : BLK;                                   \
        const T *xs = jb->x + i0;                                                                 \
        buckets_##SUF(xs, n, pmin, scale, nb, idx);                                               \
        for (long k = 0; k < n; k++) {                                                            \
            const uint32_t b = idx[k];                                                            \
            if (b == 0) { below++; continue; }                                                    \
            if (b > (uint32_t)nb && xs[k] > jb->pmax) continue;    /* bucket nb + 1 holds pmax */ \
            const uint32_t r = b >> rshift;                                                       \
            T *st = stage + (size_t)r * SW;                                                       \
            st[sc[r]++] = xs[k];                                                                  \
            if (sc[r] == SW) {                                                                    \
                sc[r] = 0;                                                                        \
                T *slot = buf + r * cap;                                                          \
                STREAM_LINE(slot + len[r], st);                                                   \
                len[r] += SW;                                                                     \
                if (len[r] == cap) { sum += rank_block_##SUF(jb, slot, cap); len[r] = 0; }        \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    STREAM_FENCE;                                                                                 \
    for (long r = 0; r < nr; r++) { sum += rank_block_##SUF(jb, buf + r * cap, len[r]);           \
                                    sum += rank_block_##SUF(jb, stage + r * SW, sc[r]); }         \
    jb->sum = sum + 2 * (int64_t)jb->npos * below;                                                \
    free(buf); free(len); free(stage); free(sc);                                                  \
    return NULL;                                                                                  \
}                                                                                                 \
                                                                                                  \
/* Returns the sum (>= 0), or -1 when memory or a thread could not be had. rv/rlt/rgt: the      \
 * records of rank_records, or NULL (the gather loop below ranks instead). */                   \
int64_t rank_count_##SUF(const T *x, long total, const T *d, const uint32_t *c, const uint32_t *start, \
                         long nd, long npos, T pmin, T scale, long nb, int rshift, long cap,     \
                         int ties, int long_buckets, int threads, const T *rv, const uint32_t *rlt,    \
                         const uint32_t *rgt) {                                                   \
    job_##SUF jobs[MAX_THREADS]; pthread_t tid[MAX_THREADS]; int started[MAX_THREADS] = {0};      \
    if (threads < 1) threads = 1;                                                                 \
    if (threads > MAX_THREADS) threads = MAX_THREADS;                                             \
    for (int t = 0; t < threads; t++)                                                             \
        jobs[t] = (job_##SUF){x, total * t / threads, total * (t + 1) / threads, d, c, start,     \
                              nd, npos, nb, cap, pmin, d[nd - 1], scale, rshift, ties, long_buckets, 0, 0, \
                              rv, rlt, rgt};                                                      \
    for (int t = 1; t < threads; t++)                                                             \
        started[t] = pthread_create(&tid[t], NULL, rank_run_##SUF, &jobs[t]) == 0;                \
    rank_run_##SUF(&jobs[0]);                                                                     \
    int64_t sum = 0; int failed = jobs[0].failed;                                                 \
    for (int t = 1; t < threads; t++) {                                                           \
        if (started[t]) pthread_join(tid[t], NULL);                                               \
        else rank_run_##SUF(&jobs[t]);           /* no thread: run its part here */              \
        failed |= jobs[t].failed;                                                                 \
    }                                                                                             \
    for (int t = 0; t < threads; t++) sum += jobs[t].sum;                                         \
    return failed ? -1 : sum;                                                                     \
}

#if defined(__AVX512F__)
/* bucket_f32 / bucket_f64 of 16 float32 / 8 float64 scores: the same subtraction then
 * multiplication (no contraction possible), so every score lands in the bucket its scalar
 * evaluation gives. Inlined into the loops below, whose broadcasts the compiler hoists. */
static inline __m512i buckets16_f32(__m512 v, float pmin, float scale, long nb) {
    const __m512 t = _mm512_mul_ps(_mm512_sub_ps(v, _mm512_set1_ps(pmin)), _mm512_set1_ps(scale));
    const __mmask16 ge0 = _mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_GE_OQ);
    const __mmask16 gen = _mm512_cmp_ps_mask(t, _mm512_set1_ps((float)nb), _CMP_GE_OQ);
    const __m512i bi = _mm512_maskz_add_epi32(ge0, _mm512_cvttps_epi32(t), _mm512_set1_epi32(1));
    return _mm512_mask_mov_epi32(bi, gen, _mm512_set1_epi32((int)nb + 1));
}
static inline __m256i buckets8_f64(__m512d v, double pmin, double scale, long nb) {
    const __m512d t = _mm512_mul_pd(_mm512_sub_pd(v, _mm512_set1_pd(pmin)), _mm512_set1_pd(scale));
    const __mmask8 ge0 = _mm512_cmp_pd_mask(t, _mm512_setzero_pd(), _CMP_GE_OQ);
    const __mmask8 gen = _mm512_cmp_pd_mask(t, _mm512_set1_pd((double)nb), _CMP_GE_OQ);
    const __m256i bi = _mm256_maskz_add_epi32(ge0, _mm512_cvttpd_epi32(t), _mm256_set1_epi32(1));
    return _mm256_mask_mov_epi32(bi, gen, _mm256_set1_epi32((int)nb + 1));
}
#endif

/* 16 float32 (8 float64) scores at a time (AVX-512): bucket, two gathers from the table, then one
 * masked gather per step along the bucket's sorted distinct values; a lane stops at its first
 * value >= x, so the step count is the largest j + 1 of the 16 lanes (buckets hold ~1 value
 * on average). Lanes whose bucket holds more than LANES values are left to the scalar loop's
 * binary search (a flag forces the scalar loop for the whole block). Buckets: buckets16_f32. */
#if defined(__AVX512F__)
#define VECTOR_BLOCK_f32                                                                          \
    if (jb->long_buckets == 0) {                                                                  \
        const __m512i one = _mm512_set1_epi32(1);                                                 \
        __m512i acc = _mm512_setzero_si512();                                                     \
        int64_t eqs = 0;                                                                          \
        for (; i + 16 <= n; i += 16) {                                                            \
            const __m512 v = _mm512_loadu_ps(xs + i);                                             \
            const __m512i bi = buckets16_f32(v, pmin, scale, nb);                                 \
            const __m512i lo = _mm512_i32gather_epi32(bi, (const int *)start, 4);                 \
            const __m512i hi = _mm512_i32gather_epi32(_mm512_add_epi32(bi, one), (const int *)start, 4); \
            const __m512i m = _mm512_sub_epi32(hi, lo);                                           \
            __m512i j = _mm512_setzero_si512();                                                   \
            __mmask16 act = _mm512_cmpgt_epi32_mask(m, j), eq = 0;                                \
            while (act) {                                                                         \
                const __m512 dv = _mm512_mask_i32gather_ps(v, act, _mm512_add_epi32(lo, j), d, 4); \
                const __mmask16 lt = _mm512_mask_cmp_ps_mask(act, dv, v, _CMP_LT_OQ);            \
                eq |= _mm512_mask_cmp_ps_mask(act, dv, v, _CMP_EQ_OQ);                            \
                j = _mm512_mask_add_epi32(j, lt, j, one);                                         \
                act = _mm512_mask_cmpgt_epi32_mask(lt, m, j);                                     \
            }                                                                                     \
            __m512i r = _mm512_add_epi32(lo, j);                                                  \
            if (jb->ties) {                                                                       \
                const __m512i cj = _mm512_i32gather_epi32(r, (const int *)c, 4);                  \
                const __m512i ce = _mm512_i32gather_epi32(_mm512_mask_add_epi32(r, eq, r, one),   \
                                                          (const int *)c, 4);                     \
                acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(cj)));   \
                acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(cj, 1))); \
                acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(ce)));   \
                acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(ce, 1))); \
            } else {                                                                              \
                r = _mm512_add_epi32(r, r);        /* 2*(lo + j) < 2^32: unsigned */              \
                acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(r)));    \
                acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(r, 1))); \
                eqs += __builtin_popcount(eq);                                                    \
            }                                                                                     \
        }                                                                                         \
        sub += _mm512_reduce_add_epi64(acc) + eqs;                                                \
    }
#else
#define VECTOR_BLOCK_f32
#endif
#if defined(__AVX512F__)
#define VECTOR_BLOCK_f64                                                                          \
    if (jb->long_buckets == 0) {                                                                  \
        const __m256i one = _mm256_set1_epi32(1);                                                 \
        __m512i acc = _mm512_setzero_si512();                                                     \
        int64_t eqs = 0;                                                                          \
        for (; i + 8 <= n; i += 8) {                                                              \
            const __m512d v = _mm512_loadu_pd(xs + i);                                            \
            const __m256i bi = buckets8_f64(v, pmin, scale, nb);                                  \
            const __m256i lo = _mm256_i32gather_epi32((const int *)start, bi, 4);                 \
            const __m256i hi = _mm256_i32gather_epi32((const int *)start, _mm256_add_epi32(bi, one), 4); \
            const __m256i m = _mm256_sub_epi32(hi, lo);                                           \
            __m256i j = _mm256_setzero_si256();                                                   \
            __mmask8 act = _mm256_cmpgt_epi32_mask(m, j), eq = 0;                                 \
            while (act) {                                                                         \
                const __m512d dv = _mm512_mask_i32gather_pd(v, act, _mm256_add_epi32(lo, j), d, 8); \
                const __mmask8 lt = _mm512_mask_cmp_pd_mask(act, dv, v, _CMP_LT_OQ);             \
                eq |= _mm512_mask_cmp_pd_mask(act, dv, v, _CMP_EQ_OQ);                            \
                j = _mm256_mask_add_epi32(j, lt, j, one);                                         \
                act = _mm256_mask_cmpgt_epi32_mask(lt, m, j);                                     \
            }                                                                                     \
            __m256i r = _mm256_add_epi32(lo, j);                                                  \
            if (jb->ties) {                                                                       \
                const __m256i cj = _mm256_i32gather_epi32((const int *)c, r, 4);                  \
                const __m256i ce = _mm256_i32gather_epi32((const int *)c,                         \
                                                          _mm256_mask_add_epi32(r, eq, r, one), 4); \
                acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(cj));                           \
                acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(ce));                           \
            } else {                                                                              \
                r = _mm256_add_epi32(r, r);        /* 2*(lo + j) < 2^32: unsigned */              \
                acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(r));                            \
                eqs += __builtin_popcount(eq);                                                    \
            }                                                                                     \
        }                                                                                         \
        sub += _mm512_reduce_add_epi64(acc) + eqs;                                                \
    }
#else
#define VECTOR_BLOCK_f64
#endif

/* buckets of 16 (8) scores at once, the arithmetic of bucket_##SUF; a full staging line leaves
 * by one streaming store */
#if defined(__AVX512F__)
#define VECTOR_BUCKETS_f32                                                                              \
    for (; k + 16 <= n; k += 16)                                                                  \
        _mm512_storeu_si512(out + k, buckets16_f32(_mm512_loadu_ps(xs + k), pmin, scale, nb));
#define VECTOR_BUCKETS_f64                                                                              \
    for (; k + 8 <= n; k += 8)                                                                    \
        _mm256_storeu_si256((__m256i *)(out + k), buckets8_f64(_mm512_loadu_pd(xs + k), pmin, scale, nb));
#define STREAM_LINE(dst, src) _mm512_stream_si512((void *)(dst), _mm512_load_si512((const void *)(src)))
#define STREAM_FENCE _mm_sfence()
#else
#define VECTOR_BUCKETS_f32
#define VECTOR_BUCKETS_f64
#define STREAM_LINE(dst, src) memcpy((dst), (src), LINE)
#define STREAM_FENCE
#endif
/* 16 float32 (8 float64) scores at a time from the bucket records: three gathers (value, lt,
 * gt) and two compares per score, instead of the bucket bounds, a walk along the bucket's
 * values and two count gathers; lanes of a >= 2-value bucket are ranked by rank_one. */
#if defined(__AVX512F__)
#define RECORD_BLOCK_f32                                                                          \
    if (jb->rv) {                                                                                 \
        const __m512i search = _mm512_set1_epi32((int)RECORD_SEARCH);                            \
        __m512i acc = _mm512_setzero_si512();                                                     \
        int64_t direct = 0; const long i0 = i;                                                    \
        for (; i + 16 <= n; i += 16) {                                                            \
            const __m512 v = _mm512_loadu_ps(xs + i);                                             \
            const __m512i bi = buckets16_f32(v, pmin, scale, nb);                                 \
            const __m512 pv = _mm512_i32gather_ps(bi, jb->rv, 4);                                 \
            const __m512i lt = _mm512_i32gather_epi32(bi, (const int *)jb->rlt, 4);               \
            const __m512i gt = _mm512_i32gather_epi32(bi, (const int *)jb->rgt, 4);               \
            const __mmask16 far = _mm512_cmpneq_epi32_mask(gt, search);                           \
            __m512i cnt = _mm512_add_epi32(_mm512_srli_epi32(lt, 1), _mm512_srli_epi32(gt, 1));   \
            cnt = _mm512_mask_mov_epi32(cnt, _mm512_cmp_ps_mask(v, pv, _CMP_LT_OQ), lt);          \
            cnt = _mm512_mask_mov_epi32(cnt, _mm512_cmp_ps_mask(v, pv, _CMP_GT_OQ), gt);          \
            cnt = _mm512_maskz_mov_epi32(far, cnt);                                               \
            acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(cnt)));      \
            acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(cnt, 1))); \
            for (unsigned near = (unsigned)(__mmask16)~far; near; near &= near - 1)               \
                direct += rank_one_f32(jb, xs[i + __builtin_ctz(near)]);                          \
        }                                                                                         \
        sub += 2 * (int64_t)jb->npos * (i - i0) - (_mm512_reduce_add_epi64(acc) + direct);        \
    }
#define RECORD_BLOCK_f64                                                                          \
    if (jb->rv) {                                                                                 \
        const __m256i search = _mm256_set1_epi32((int)RECORD_SEARCH);                            \
        __m512i acc = _mm512_setzero_si512();                                                     \
        int64_t direct = 0; const long i0 = i;                                                    \
        for (; i + 8 <= n; i += 8) {                                                              \
            const __m512d v = _mm512_loadu_pd(xs + i);                                            \
            const __m256i bi = buckets8_f64(v, pmin, scale, nb);                                  \
            const __m512d pv = _mm512_i32gather_pd(bi, jb->rv, 8);                                \
            const __m256i lt = _mm256_i32gather_epi32((const int *)jb->rlt, bi, 4);               \
            const __m256i gt = _mm256_i32gather_epi32((const int *)jb->rgt, bi, 4);               \
            const __mmask8 far = _mm256_cmpneq_epi32_mask(gt, search);                            \
            __m256i cnt = _mm256_add_epi32(_mm256_srli_epi32(lt, 1), _mm256_srli_epi32(gt, 1));   \
            cnt = _mm256_mask_mov_epi32(cnt, _mm512_cmp_pd_mask(v, pv, _CMP_LT_OQ), lt);          \
            cnt = _mm256_mask_mov_epi32(cnt, _mm512_cmp_pd_mask(v, pv, _CMP_GT_OQ), gt);          \
            cnt = _mm256_maskz_mov_epi32(far, cnt);                                               \
            acc = _mm512_add_epi64(acc, _mm512_cvtepu32_epi64(cnt));                              \
            for (unsigned near = (unsigned)(__mmask8)~far; near; near &= near - 1)                \
                direct += rank_one_f64(jb, xs[i + __builtin_ctz(near)]);                          \
        }                                                                                         \
        sub += 2 * (int64_t)jb->npos * (i - i0) - (_mm512_reduce_add_epi64(acc) + direct);        \
    }
#else
#define RECORD_BLOCK_f32
#define RECORD_BLOCK_f64
#endif
DEFINE_KERNEL(float, f32)
DEFINE_KERNEL(double, f64)
