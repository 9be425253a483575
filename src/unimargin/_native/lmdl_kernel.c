/* Compiled CPU kernel of the fused lmdl step (SPEC §2.6), used by
 * unimargin.heads.lmdl.LMDLFusedStep for small K on one process (see lmdl_kernel.py).
 *
 * Why: at K ≲ 64 the step is ~90 tiny tensor operations whose per-operation overhead
 * (Python binding + dispatcher + allocation) costs several times the arithmetic. Here the
 * forward is two passes over the batch and the backward three, with the same formulas as
 * the PyTorch implementation (the reference; the tests compare the two in float64):
 *
 *   m̄_c = mean_{y_i=c} f_i,  m_c = lerp(M_c, m̄_c, κ_c), κ_c = present_c (1 − μ seen_c)
 *   CE = mean_i −log softmax(z_i)_{y_i},  z_i = W f_i + b
 *   compact = Σ_i s_i [‖f_i − m_{y_i}‖ − δ_v]₊²,  s_i = ω_{y_i} / n_{y_i}
 *   d_cj = (z̄_cc − z̄_cj) / max(‖w_c − w_j‖, 1e-12),  z̄_c = mean_{y_i=c} z_i = W m̄_c + b
 *   margin = Σ_c ω_c max_{j≠c} [δ_d − d_cj]₊   (or mean_{j≠c}),  reg = Σ_c ω_c ‖m_c‖
 *   loss = CE + a·compact + b·margin + g·reg,  ω_c = present_c / |C_B|
 *
 * Every array is contiguous and row-major; REAL is float or double (the file includes
 * itself once per type). Single-threaded: the caller picks this path only for small K.
 */
#ifndef REAL
#include <math.h>
#include <stdint.h>
#include <string.h>

/* work layout (REAL elements) shared by forward and backward */
#define WORK_PROBS(B, K) 0
#define WORK_COEF(B, K) ((B) * (K))
#define WORK_COUNTS(B, K) ((B) * (K) + (B))
#define WORK_KEEP(B, K) (WORK_COUNTS(B, K) + (K))
#define WORK_OMEGA(B, K) (WORK_KEEP(B, K) + (K))
#define WORK_CNORM(B, K) (WORK_OMEGA(B, K) + (K))
#define WORK_DIST(B, K) (WORK_CNORM(B, K) + (K))
#define WORK_PDIST(B, K) (WORK_DIST(B, K) + (K) * (K))
#define WORK_SIZE(B, K) (WORK_PDIST(B, K) + (K) * (K))

long lmdl_work_size(long B, long K) { return WORK_SIZE(B, K); }

/* ---- the present-class step (any K; max aggregation): lmdl_present + lmdl_present_* ----
 * The B×K and P×K×d products (logits, their log-softmax, the P×K Gram W_p Wᵀ that ranks
 * nearest-boundary candidates, and the backward's two matmuls) run in the caller's
 * multi-threaded BLAS; these functions do every other part in one pass each: O(B·d + B·K +
 * P·K + P·d·candidates). */

/* The classes present in y (sorted) and each sample's row among them. Returns P, or
 * −(1 + i) for the first label y_i outside [0, K). mark is K scratch longs. */
long lmdl_present(long B, long K, const int64_t *y, int64_t *present, int64_t *rows, int64_t *mark) {
    for (long k = 0; k < K; k++) mark[k] = -1;
    for (long i = 0; i < B; i++) {
        if (y[i] < 0 || y[i] >= K) return -(1 + i);
        mark[y[i]] = 0;
    }
    long P = 0;
    for (long k = 0; k < K; k++)
        if (mark[k] == 0) { mark[k] = P; present[P++] = k; }
    for (long i = 0; i < B; i++) rows[i] = mark[y[i]];
    return P;
}

/* work layout of the present-class step (REAL elements): m̄ (P×d), then P counts, P κ,
 * P mean ‖f‖, P d*, P ‖Δ*‖, B ‖r_i‖ */
long lmdl_present_work_size(long B, long P, long d) { return P * d + 5 * P + B; }
long lmdl_scratch_size(long B, long K, long d) { return K * K + K * d + B * K; }

/* register width of the target (-march=native when the compiler takes it) */
#if defined(__AVX512F__)
#define VECTOR_BYTES 64
#elif defined(__AVX__)
#define VECTOR_BYTES 32
#else
#define VECTOR_BYTES 16
#endif

#define REAL float
#define IREAL int32_t
#define FN(name) name##_f32
#define EXP expf
#define LOG logf
#define SQRT sqrtf
#define NEXTUP(x) nextafterf(x, INFINITY)
#include "lmdl_kernel.c" /* this file again, for the next REAL */
#undef REAL
#undef IREAL
#undef FN
#undef EXP
#undef LOG
#undef SQRT
#undef NEXTUP
#define REAL double
#define IREAL int64_t
#define FN(name) name##_f64
#define EXP exp
#define LOG log
#define SQRT sqrt
#define NEXTUP(x) nextafter(x, INFINITY)
#include "lmdl_kernel.c" /* this file again, for the next REAL */
#undef REAL
#undef IREAL
#undef FN
#undef EXP
#undef LOG
#undef SQRT
#undef NEXTUP

#else /* the body, once per REAL */

/* GCC/Clang vector extensions: vectors of the target's register width that the compiler
 * keeps in registers; unaligned loads/stores through memcpy */
#define LANES ((long)(VECTOR_BYTES / sizeof(REAL)))
typedef REAL FN(vec) __attribute__((vector_size(VECTOR_BYTES)));

static inline FN(vec) FN(load)(const REAL *p) {
    FN(vec) v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void FN(store)(REAL *p, FN(vec) v) { memcpy(p, &v, sizeof v); }

static inline REAL FN(hsum)(FN(vec) v) { /* pairwise: log2(LANES) dependent adds */
    REAL t[LANES];
    memcpy(t, &v, sizeof v);
    for (long width = LANES / 2; width > 0; width /= 2)
        for (long j = 0; j < width; j++) t[j] += t[j + width];
    return t[0];
}

static inline REAL FN(dot)(const REAL *a, const REAL *b, long n) {
    FN(vec) s0 = {0}, s1 = {0};
    long j = 0;
    for (; j + 2 * LANES <= n; j += 2 * LANES) {
        s0 += FN(load)(a + j) * FN(load)(b + j);
        s1 += FN(load)(a + j + LANES) * FN(load)(b + j + LANES);
    }
    REAL s = FN(hsum)(s0 + s1);
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}

static inline REAL FN(dist2)(const REAL *a, const REAL *b, long n) {
    FN(vec) s0 = {0};
    long j = 0;
    for (; j + LANES <= n; j += LANES) {
        FN(vec) t = FN(load)(a + j) - FN(load)(b + j);
        s0 += t * t;
    }
    REAL s = FN(hsum)(s0);
    for (; j < n; j++) s += (a[j] - b[j]) * (a[j] - b[j]);
    return s;
}

static inline void FN(axpy)(REAL *y, REAL a, const REAL *x, long n) {
    long j = 0;
    for (; j + LANES <= n; j += LANES) FN(store)(y + j, FN(load)(y + j) + a * FN(load)(x + j));
    for (; j < n; j++) y[j] += a * x[j];
}

/* out[t] = base[t] (+ extra[t]) + Σ_{m<count} coef[m·stride] rows[m·d + t] for t < d, four
 * vectors of t at a time so the sums stay in registers (not a load-add-store per term) */
static void FN(combine_rows)(REAL *out, const REAL *base, const REAL *extra, const REAL *coef, long stride,
                             const REAL *rows, long count, long d) {
    long t = 0;
    for (; t + 4 * LANES <= d; t += 4 * LANES) {
        FN(vec) a0 = FN(load)(base + t), a1 = FN(load)(base + t + LANES);
        FN(vec) a2 = FN(load)(base + t + 2 * LANES), a3 = FN(load)(base + t + 3 * LANES);
        if (extra) {
            a0 += FN(load)(extra + t), a1 += FN(load)(extra + t + LANES);
            a2 += FN(load)(extra + t + 2 * LANES), a3 += FN(load)(extra + t + 3 * LANES);
        }
        for (long m = 0; m < count; m++) {
            const REAL c = coef[m * stride], *r = rows + m * d + t;
            a0 += c * FN(load)(r), a1 += c * FN(load)(r + LANES);
            a2 += c * FN(load)(r + 2 * LANES), a3 += c * FN(load)(r + 3 * LANES);
        }
        FN(store)(out + t, a0), FN(store)(out + t + LANES, a1);
        FN(store)(out + t + 2 * LANES, a2), FN(store)(out + t + 3 * LANES, a3);
    }
    for (; t < d; t++) {
        REAL v = base[t] + (extra ? extra[t] : (REAL)0);
        for (long m = 0; m < count; m++) v += coef[m * stride] * rows[m * d + t];
        out[t] = v;
    }
}

/* (w_c − w_j)ᵀ m and ‖w_c − w_j‖² with vector accumulators (a scalar loop would be an
 * in-order reduction: one dependent add per element) */
static inline void FN(pair_terms)(const REAL *wc, const REAL *wj, const REAL *m, long n, REAL *numer, REAL *sq) {
    FN(vec) s0 = {0}, q0 = {0};
    long j = 0;
    for (; j + LANES <= n; j += LANES) {
        FN(vec) t = FN(load)(wc + j) - FN(load)(wj + j);
        s0 += t * FN(load)(m + j);
        q0 += t * t;
    }
    REAL s = FN(hsum)(s0), q = FN(hsum)(q0);
    for (; j < n; j++) {
        REAL t = wc[j] - wj[j];
        s += t * m[j], q += t * t;
    }
    *numer = s, *sq = q;
}

/* the margin's pair gradient: gm += a Δ, gc = a m + e Δ, gj = −gc, Δ = wc − wj */
static inline void FN(pair_grad)(const REAL *restrict wc, const REAL *restrict wj, const REAL *restrict m, REAL a,
                                 REAL e, long n, REAL *restrict gm, REAL *restrict gc, REAL *restrict gj) {
    for (long t = 0; t < n; t++) {
        REAL df = wc[t] - wj[t], v = a * m[t] + e * df;
        gm[t] += a * df;
        gc[t] = v, gj[t] = -v;
    }
}

/* compactness residual gradient: q = a (f − m); gf = q, gm −= q */
static inline void FN(resid_grad)(const REAL *restrict f, const REAL *restrict m, REAL a, long n,
                                  REAL *restrict gf, REAL *restrict gm) {
    for (long t = 0; t < n; t++) {
        REAL q = a * (f[t] - m[t]);
        gf[t] = q, gm[t] -= q;
    }
}

/* Branch-free ranking of one present class's row (the expansion; no gradient): for k in
 * [lo, hi): z̄_ck = inv · Σ_m Z[order[m], k] over the class's n samples (the class mean of
 * the logits, summed here so no P×K array of them is written), den = ‖w_c‖² + ‖w_k‖² −
 * 2 G_ck, d̂ = (z_c − z̄_ck)/√max(den, 1e-24), stored in row[k] as −inf for near pairs
 * (den < near: always re-checked exactly) and d̂ otherwise; *best / *arg: the least far d̂
 * and its lowest index (unchanged if none is less). Vector compare-and-select. */
typedef IREAL FN(ivec) __attribute__((vector_size(VECTOR_BYTES)));

static inline FN(ivec) FN(select)(FN(ivec) mask, FN(ivec) a, FN(ivec) b) { return (mask & a) | (~mask & b); }

/* z̄_ck for one k: the same additions in the same order as the vector lanes below */
static inline REAL FN(class_logit)(const REAL *Z, long K, const int64_t *order, long n, REAL inv, long k) {
    REAL s = 0;
    for (long m = 0; m < n; m++) s += Z[order[m] * K + k];
    return s * inv;
}

static void FN(rank_row)(REAL *restrict row, const REAL *restrict Z, long K, const int64_t *order, long n, REAL inv,
                         const REAL *restrict wsq, REAL wsq_c, REAL z_c, REAL near, long lo, long hi, REAL *best,
                         long *arg) {
    const FN(vec) inf = (FN(vec)){0} + (REAL)INFINITY, ninf = -inf, tiny = (FN(vec)){0} + (REAL)1e-24;
    FN(vec) vbest = inf;
    FN(ivec) varg = (FN(ivec)){0} - 1, lane;
    for (long l = 0; l < LANES; l++) lane[l] = (IREAL)l;
    long k = lo;
    for (; k + LANES <= hi; k += LANES) {
        FN(vec) zs = {0};
        for (long m = 0; m < n; m++) zs += FN(load)(Z + order[m] * K + k);
        FN(vec) den = (FN(vec)){0} + wsq_c + FN(load)(wsq + k) - 2 * FN(load)(row + k);
        FN(ivec) far = (FN(ivec))(den >= near);
        FN(vec) clamped = (FN(vec))FN(select)((FN(ivec))(den > tiny), (FN(ivec))den, (FN(ivec))tiny);
        REAL root[LANES];
        memcpy(root, &clamped, sizeof clamped);
        for (long l = 0; l < LANES; l++) root[l] = SQRT(root[l]);  /* one vector sqrt */
        FN(vec) dh = ((FN(vec)){0} + z_c - zs * inv) / FN(load)(root);
        FN(store)(row + k, (FN(vec))FN(select)(far, (FN(ivec))dh, (FN(ivec))ninf));
        FN(ivec) better = far & (FN(ivec))(dh < vbest);
        vbest = (FN(vec))FN(select)(better, (FN(ivec))dh, (FN(ivec))vbest);
        varg = FN(select)(better, lane + (IREAL)k, varg);
    }
    REAL lb[LANES];
    IREAL la[LANES];
    memcpy(lb, &vbest, sizeof vbest);
    memcpy(la, &varg, sizeof varg);
    for (long l = 0; l < LANES; l++)  /* lowest index among the lanes' least values */
        if (la[l] >= 0 && (lb[l] < *best || (lb[l] == *best && la[l] < *arg))) *best = lb[l], *arg = la[l];
    for (; k < hi; k++) {
        REAL den = wsq_c + wsq[k] - 2 * row[k];
        REAL dh = (z_c - FN(class_logit)(Z, K, order, n, inv, k)) / SQRT(den > (REAL)1e-24 ? den : (REAL)1e-24);
        row[k] = den < near ? (REAL)-INFINITY : dh;
        if (!(den < near) && (dh < *best || (dh == *best && k < *arg))) *best = dh, *arg = k;
    }
}

/* the first k >= from with row[k] <= limit (−inf near pairs included; NaN never), or hi */
static inline long FN(next_candidate)(const REAL *row, REAL limit, long from, long hi) {
    const FN(vec) lim = (FN(vec)){0} + limit;
    long k = from;
    for (; k + 4 * LANES <= hi; k += 4 * LANES) {
        FN(ivec) m = (FN(ivec))(FN(load)(row + k) <= lim) | (FN(ivec))(FN(load)(row + k + LANES) <= lim)
                   | (FN(ivec))(FN(load)(row + k + 2 * LANES) <= lim) | (FN(ivec))(FN(load)(row + k + 3 * LANES) <= lim);
        IREAL t[LANES], any = 0;
        memcpy(t, &m, sizeof m);
        for (long l = 0; l < LANES; l++) any |= t[l];
        if (any) break;
    }
    for (; k < hi; k++)
        if (row[k] <= limit) return k;
    return hi;
}

/* torch.lerp's formula (exact at both ends) */
static inline REAL FN(lerp)(REAL start, REAL end, REAL weight) {
    return weight < (REAL)0.5 ? start + weight * (end - start) : end - (end - start) * ((REAL)1 - weight);
}

/* Returns 0, or 1 + the index of the first label outside [0, K). */
long FN(lmdl_forward)(long B, long K, long d, const REAL *f, const REAL *W, const REAL *bias,
                      const int64_t *y, const REAL *M, const uint8_t *seen, double delta_v,
                      double delta_d, double momentum, int max_agg, double ca, double cb, double cg,
                      REAL *out, REAL *logits, REAL *centroid, uint8_t *present, REAL *work) {
    REAL *probs = work + WORK_PROBS(B, K), *coef = work + WORK_COEF(B, K);
    REAL *counts = work + WORK_COUNTS(B, K), *keep = work + WORK_KEEP(B, K);
    REAL *omega = work + WORK_OMEGA(B, K), *cnorm = work + WORK_CNORM(B, K);
    REAL *dist = work + WORK_DIST(B, K), *pdist = work + WORK_PDIST(B, K);
    const REAL dv = (REAL)delta_v, dd = (REAL)delta_d;

    /* pass 1: class sums (into centroid) and counts */
    memset(centroid, 0, sizeof(REAL) * K * d);
    memset(counts, 0, sizeof(REAL) * K);
    for (long i = 0; i < B; i++) {
        int64_t c = y[i];
        if (c < 0 || c >= K) return i + 1;
        counts[c] += 1;
        FN(axpy)(centroid + c * d, (REAL)1, f + i * d, d);
    }
    long n_present = 0;
    for (long c = 0; c < K; c++) n_present += counts[c] > 0;
    for (long c = 0; c < K; c++) {
        present[c] = counts[c] > 0;
        omega[c] = present[c] ? (REAL)1 / (REAL)n_present : (REAL)0;
        keep[c] = present[c] ? (seen[c] ? (REAL)(1.0 - momentum) : (REAL)1) : (REAL)0;
        REAL inv_n = present[c] ? (REAL)1 / counts[c] : (REAL)0;
        REAL *m = centroid + c * d;
        const REAL *hist = M + c * d;
        for (long j = 0; j < d; j++) m[j] = FN(lerp)(hist[j], m[j] * inv_n, keep[c]);
    }

    /* pass 2: logits, log-softmax, compactness, class means of the logits (into dist) */
    memset(dist, 0, sizeof(REAL) * K * K);
    double ce = 0, compact = 0;
    for (long i = 0; i < B; i++) {
        const REAL *fi = f + i * d;
        REAL *zi = logits + i * K, *pi = probs + i * K;
        int64_t c = y[i];
        REAL zmax = -INFINITY;
        for (long k = 0; k < K; k++) {
            zi[k] = FN(dot)(W + k * d, fi, d) + (bias ? bias[k] : (REAL)0);
            if (zi[k] > zmax) zmax = zi[k];
        }
        REAL sum = 0;
        for (long k = 0; k < K; k++) sum += (pi[k] = EXP(zi[k] - zmax));
        for (long k = 0; k < K; k++) pi[k] /= sum;
        ce += (double)(zmax + LOG(sum) - zi[c]);

        REAL norm = SQRT(FN(dist2)(fi, centroid + c * d, d));
        REAL hinge = norm > dv ? norm - dv : (REAL)0;
        REAL s = omega[c] / counts[c];
        compact += (double)(s * hinge * hinge);
        coef[i] = hinge > 0 ? (REAL)2 * s * hinge / norm : (REAL)0;
        FN(axpy)(dist + c * K, (REAL)1 / counts[c], zi, K);
    }

    /* pair distances ‖w_c − w_j‖ and d_cj (rows of absent classes are unused) */
    for (long c = 0; c < K; c++) {
        pdist[c * K + c] = 0;
        for (long j = c + 1; j < K; j++)
            pdist[c * K + j] = pdist[j * K + c] = SQRT(FN(dist2)(W + c * d, W + j * d, d));
    }
    double margin = 0, reg = 0;
    for (long c = 0; c < K; c++) {
        REAL *row = dist + c * K;
        REAL zcc = row[c];
        for (long j = 0; j < K; j++) {
            REAL D = pdist[c * K + j];
            row[j] = j == c ? (REAL)INFINITY : (zcc - row[j]) / (D > (REAL)1e-12 ? D : (REAL)1e-12);
        }
        cnorm[c] = SQRT(FN(dot)(centroid + c * d, centroid + c * d, d));
        if (!present[c]) continue;
        if (max_agg) {
            REAL nearest = row[0];
            for (long j = 1; j < K; j++)
                if (row[j] < nearest) nearest = row[j];
            margin += (double)(omega[c] * (dd - nearest > 0 ? dd - nearest : (REAL)0));
        } else {
            double h = 0;
            for (long j = 0; j < K; j++)
                if (j != c && dd - row[j] > 0) h += (double)(dd - row[j]);
            margin += (double)omega[c] * h / (double)(K - 1);
        }
        reg += (double)(omega[c] * cnorm[c]);
    }
    out[1] = (REAL)(ce / (double)B);
    out[2] = (REAL)compact;
    out[3] = (REAL)margin;
    out[4] = (REAL)reg;
    out[0] = out[1] + (REAL)ca * out[2] + (REAL)cb * out[3] + (REAL)cg * out[4];
    return 0;
}

/* Gradients of g·loss + Σ grad_logits ⊙ logits (grad_logits and grad_b may be NULL). */
void FN(lmdl_backward)(long B, long K, long d, const REAL *f, const REAL *W, const int64_t *y,
                       const REAL *centroid, const REAL *work, int max_agg, double delta_d, double ca,
                       double cb, double cg, double g, const REAL *grad_logits, REAL *grad_f,
                       REAL *grad_W, REAL *grad_b, REAL *scratch) {
    const REAL *probs = work + WORK_PROBS(B, K), *coef = work + WORK_COEF(B, K);
    const REAL *counts = work + WORK_COUNTS(B, K), *keep = work + WORK_KEEP(B, K);
    const REAL *omega = work + WORK_OMEGA(B, K), *cnorm = work + WORK_CNORM(B, K);
    const REAL *dist = work + WORK_DIST(B, K), *pdist = work + WORK_PDIST(B, K);
    REAL *grad_zbar = scratch, *grad_mean = scratch + K * K, *dz = scratch + K * K + K * d;
    const REAL dd = (REAL)delta_d;

    memset(grad_W, 0, sizeof(REAL) * K * d);
    if (grad_b) memset(grad_b, 0, sizeof(REAL) * K);
    memset(grad_zbar, 0, sizeof(REAL) * K * K);
    memset(grad_mean, 0, sizeof(REAL) * K * d);

    /* margin: the active hinges [δ_d − d_cj]₊ with weight a = β g ω_c (÷ (K − 1) for mean) */
    for (long c = 0; c < K; c++) {
        if (omega[c] == 0) continue;
        const REAL *row = dist + c * K;
        long first = 0, last = K;
        if (max_agg) { /* the arg-min (first one on ties, as torch.min) gets the gradient */
            for (long j = 1; j < K; j++)
                if (row[j] < row[first]) first = j;
            last = first + 1;
        }
        REAL a = (REAL)(cb * g) * omega[c] / (max_agg ? (REAL)1 : (REAL)(K - 1));
        for (long j = first; j < last; j++) {
            if (j == c || !(dd - row[j] > 0)) continue;
            REAL D = pdist[c * K + j];
            REAL inv = (REAL)1 / (D > (REAL)1e-12 ? D : (REAL)1e-12);
            grad_zbar[c * K + c] -= a * inv; /* d_cj = (z̄_cc − z̄_cj)/D, loss term −a d_cj */
            grad_zbar[c * K + j] += a * inv;
            if (D >= (REAL)1e-12) { /* ∂/∂D = a d_cj / D, ∂D/∂w_c = (w_c − w_j)/D */
                REAL q = a * row[j] * inv * inv;
                const REAL *wc = W + c * d, *wj = W + j * d;
                REAL *gc = grad_W + c * d, *gj = grad_W + j * d;
                for (long t = 0; t < d; t++) {
                    REAL diff = q * (wc[t] - wj[t]);
                    gc[t] += diff;
                    gj[t] -= diff;
                }
            }
        }
    }

    /* reg and compactness into ∂/∂m_c; the compactness part of ∂/∂f_i goes to grad_f */
    for (long c = 0; c < K; c++)
        if (omega[c] > 0 && cnorm[c] > 0)
            FN(axpy)(grad_mean + c * d, (REAL)(cg * g) * omega[c] / cnorm[c], centroid + c * d, d);
    for (long i = 0; i < B; i++) {
        const REAL *fi = f + i * d, *mc = centroid + y[i] * d;
        REAL *gfi = grad_f + i * d, *gm = grad_mean + y[i] * d;
        REAL r = (REAL)(ca * g) * coef[i];
        for (long t = 0; t < d; t++) {
            REAL v = r * (fi[t] - mc[t]);
            gfi[t] = v;
            gm[t] -= v;
        }
    }
    /* m = lerp(M, m̄, κ): ∂/∂m̄ = κ ∂/∂m; m̄_c = mean over the class: ÷ n_c per sample */
    for (long c = 0; c < K; c++) {
        REAL scale = counts[c] > 0 ? keep[c] / counts[c] : (REAL)0;
        REAL *gm = grad_mean + c * d;
        for (long t = 0; t < d; t++) gm[t] *= scale;
    }

    /* ∂/∂Z (B×K): CE, z̄ = class mean of z, and the downstream use of the logits */
    const REAL g_ce = (REAL)(g / (double)B);
    for (long i = 0; i < B; i++) {
        int64_t c = y[i];
        const REAL *pi = probs + i * K, *gz = grad_zbar + c * K;
        REAL *dzi = dz + i * K, inv_n = (REAL)1 / counts[c];
        for (long k = 0; k < K; k++) {
            dzi[k] = g_ce * (pi[k] - (k == c ? (REAL)1 : (REAL)0)) + gz[k] * inv_n;
            if (grad_logits) dzi[k] += grad_logits[i * K + k];
            if (grad_b) grad_b[k] += dzi[k];
        }
    }
    /* ∂/∂f_i += ∂/∂m̄_{y_i} / n + Σ_k ∂/∂Z_ik w_k;  ∂/∂w_k += Σ_i ∂/∂Z_ik f_i */
    for (long i = 0; i < B; i++)
        FN(combine_rows)(grad_f + i * d, grad_f + i * d, grad_mean + y[i] * d, dz + i * K, 1, W, K, d);
    for (long k = 0; k < K; k++)
        FN(combine_rows)(grad_W + k * d, grad_W + k * d, NULL, dz + k, K, f, B, d);
}


/* Present-class forward (max aggregation), on top of Z = f Wᵀ + b, lp = log_softmax(Z) and
 * G = W_p Wᵀ (P×K) computed by the caller; rows/present from lmdl_present. Same terms as
 * heads/lmdl/terms.py (THE formula):
 *   m̄_p, m_p = seen ? m̄ + μ (M − m̄) : m̄;  compact = Σ_p mean_{i∈p} h_i² / P,
 *   h_i = [‖f_i − m_p‖ − δ_v]₊ (‖r‖² at δ_v = 0);  CE = −mean_i lp[i, y_i];
 *   margin = Σ_p [δ_d − min_{j≠c} d_cj]₊ / P with d_cj from the difference vector
 *   w_c − w_j; reg = Σ_p ‖m_p‖ / P.
 * The arg-min j*(c) is found as in terms.py's _margin_candidates: the expansion
 * (numerator = class mean of the logits, denominator² = ‖w_c‖² + ‖w_j‖² − 2 G) only ranks,
 * with H1's rounding-error bounds (τ = 2 (d + n_max + 8) u, near pairs R² = 256 τ σ_c,
 * per-row threshold U_c) deciding which j are re-checked exactly; j* is the lowest j
 * with the least exact d_cj. order is B + P + 1 scratch longs (samples by class). With
 * M_out (and seen_out) non-NULL the buffers are updated at the end (training mode). */
void FN(lmdl_present_forward)(long B, long K, long d, long P, const REAL *f, const REAL *W, const REAL *bias,
                              const int64_t *y, const int64_t *present, const int64_t *rows, const REAL *Z,
                              const REAL *lp, REAL *G, const REAL *M, const uint8_t *seen, double delta_v,
                              double delta_d, double momentum, double ca, double cb, double cg, double unit,
                              REAL *out, REAL *centroid, int64_t *nearest, int64_t *order, REAL *wsq, REAL *work,
                              REAL *M_out, uint8_t *seen_out) {
    REAL *mean = work, *counts = work + P * d, *keep = counts + P, *scale = keep + P;
    REAL *dstar = scale + P, *nstar = dstar + P, *rnorm = nstar + P;
    const REAL mu = (REAL)momentum, dv = (REAL)delta_v, dd = (REAL)delta_d;
    memset(mean, 0, sizeof(REAL) * (size_t)(P * d));
    memset(counts, 0, sizeof(REAL) * (size_t)(3 * P));
    int64_t *start = order + B; /* class p's samples: order[start[p] .. start[p + 1]) */
    memset(start, 0, sizeof(int64_t) * (size_t)(P + 1));
    for (long i = 0; i < B; i++) start[rows[i] + 1]++;
    for (long p = 0; p < P; p++) start[p + 1] += start[p];
    for (long i = 0; i < B; i++) order[start[rows[i]]++] = i;
    for (long p = P; p > 0; p--) start[p] = start[p - 1];
    start[0] = 0;
    double ce = 0;
    for (long i = 0; i < B; i++) {
        long p = rows[i];
        const REAL *fi = f + i * d;
        counts[p] += 1;
        FN(axpy)(mean + p * d, (REAL)1, fi, d);
        scale[p] += SQRT(FN(dot)(fi, fi, d));
        ce -= lp[i * K + y[i]];
    }
    REAL n_max = 0;
    for (long p = 0; p < P; p++) {
        REAL inv = (REAL)1 / counts[p];
        for (long t = 0; t < d; t++) mean[p * d + t] *= inv;
        scale[p] *= inv;
        if (counts[p] > n_max) n_max = counts[p];
        const REAL *Mc = M + present[p] * d, *mc = mean + p * d;
        REAL *cc = centroid + p * d;
        int was_seen = seen[present[p]] != 0;
        keep[p] = was_seen ? (REAL)1 - mu : (REAL)1;
        for (long t = 0; t < d; t++) cc[t] = was_seen ? FN(lerp)(mc[t], Mc[t], mu) : mc[t];
    }
    /* compactness and reg */
    double compact = 0, reg = 0;
    for (long i = 0; i < B; i++) {
        long p = rows[i];
        REAL r2 = FN(dist2)(f + i * d, centroid + p * d, d), nr = SQRT(r2);
        rnorm[i] = nr;
        REAL h = nr - dv > 0 ? nr - dv : (REAL)0;
        compact += (double)(dv == 0 ? r2 : h * h) / counts[p];
    }
    for (long p = 0; p < P; p++) reg += SQRT(FN(dot)(centroid + p * d, centroid + p * d, d));
    /* nearest boundary: rank with the expansion, re-check candidates exactly */
    REAL sq_max = 0, wn_max = 0, b_max = 0;
    for (long k = 0; k < K; k++) {
        wsq[k] = FN(dot)(W + k * d, W + k * d, d);
        if (wsq[k] > sq_max) sq_max = wsq[k];
        if (bias && fabs((double)bias[k]) > b_max) b_max = (REAL)fabs((double)bias[k]);
    }
    wn_max = SQRT(sq_max);
    const double tau = 2.0 * ((double)d + (double)n_max + 8.0) * unit, rho = 1.0 / 256.0;
    const double kappa = (rho + 6.0 * unit) / (1.0 - rho);
    double margin = 0;
    for (long p = 0; p < P; p++) {
        const long c = present[p];
        const REAL *wc = W + c * d, *mc = mean + p * d;
        const int64_t *members = order + start[p];
        const long n_p = start[p + 1] - start[p];
        const REAL inv_p = (REAL)1 / counts[p];
        const REAL bc = bias ? bias[c] : (REAL)0;
        double near_sq = 256.0 * tau * ((double)wsq[c] + (double)sq_max);
        if (near_sq < 4e-24) near_sq = 4e-24;
        /* the best far pair by the expansion */
        /* one branch-free (vector) pass: d̂ in place of G's row; near pairs −inf (always
         * re-checked), the self pair +inf (never) */
        REAL *row = G + p * K;
        const REAL near_f = (REAL)near_sq, wsq_c = wsq[c], z_c = FN(class_logit)(Z, K, members, n_p, inv_p, c);
        long first = -1;  /* the least far d̂ (lowest j on ties), j ≠ c */
        REAL best_hat = (REAL)INFINITY;
        FN(rank_row)(row, Z, K, members, n_p, inv_p, wsq, wsq_c, z_c, near_f, 0, c, &best_hat, &first);
        FN(rank_row)(row, Z, K, members, n_p, inv_p, wsq, wsq_c, z_c, near_f, c + 1, K, &best_hat, &first);
        row[c] = (REAL)INFINITY;
        double limit = -INFINITY;
        if (first >= 0) {
            const REAL *wj = W + first * d;
            REAL numer, n2;
            FN(pair_terms)(wc, wj, mc, d, &numer, &n2);
            REAL db = bias ? bc - bias[first] : (REAL)0, nrm = SQRT(n2);
            numer += db;
            double d0 = numer / (nrm > (REAL)1e-12 ? nrm : (REAL)1e-12);
            double top = d0 + tau * (scale[p] + fabs((double)db) / (nrm > 1e-12 ? nrm : 1e-12) + fabs(d0));
            double eps_c = tau * ((double)SQRT(wsq[c]) * scale[p] + fabs((double)bc) + wn_max * scale[p] + b_max);
            top += eps_c / (sqrt(near_sq) * (1.0 - rho));
            limit = top >= 0 ? top / (1.0 - kappa) : top / (1.0 + kappa);
        }
        long jbest = c;
        REAL dbest = (REAL)INFINITY, nbest = 0;
        /* REAL limit rounded up: every candidate of the double comparison stays one */
        REAL limit_r = (REAL)limit;
        if ((double)limit_r < limit) limit_r = NEXTUP(limit_r);
        for (long k = FN(next_candidate)(row, limit_r, 0, K); k < K; k = FN(next_candidate)(row, limit_r, k + 1, K)) {
            if (!((double)row[k] <= limit)) continue;  /* not a candidate (self: +inf) */
            const REAL *wj = W + k * d;
            REAL numer, n2;
            FN(pair_terms)(wc, wj, mc, d, &numer, &n2);
            if (bias) numer += bc - bias[k];
            REAL nrm = SQRT(n2), dk = numer / (nrm > (REAL)1e-12 ? nrm : (REAL)1e-12);
            if (dk < dbest) { dbest = dk; jbest = k; nbest = nrm; }
        }
        if (jbest == c) dbest = 0; /* K = 1: no j ≠ c (d = 0/1e-12 = 0, as terms.py) */
        nearest[p] = jbest, dstar[p] = dbest, nstar[p] = nbest;
        margin += dd - dbest > 0 ? dd - dbest : 0;
    }
    const double omega = P > 0 ? 1.0 / (double)P : 0.0;
    out[1] = (REAL)(ce / (double)B), out[2] = (REAL)(compact * omega), out[3] = (REAL)(margin * omega);
    out[4] = (REAL)(reg * omega);
    out[0] = (REAL)((double)out[1] + ca * out[2] + cb * out[3] + cg * out[4]);
    if (M_out) /* training: M_c ← m_c, seen_c ← 1 for the present classes (M_out may be M) */
        for (long p = 0; p < P; p++) {
            memcpy(M_out + present[p] * d, centroid + p * d, sizeof(REAL) * (size_t)d);
            seen_out[present[p]] = 1;
        }
}

/* Present-class backward: S (B×K) holds softmax(Z) on entry and ∂L/∂Z = g (S − Y)/B on
 * exit (the caller adds the downstream gradient of the logits), grad_b (K, or NULL: no
 * bias) its column sums; grad_f gets everything of
 * ∂L/∂f except S W (compact, reg and margin through m̄ and m); pair_grad (2P×d, rows
 * present then nearest) and pair_gb (2P) the margin's gradient on those rows of W and b. */
void FN(lmdl_present_backward)(long B, long K, long d, long P, const REAL *f, const REAL *W, const REAL *bias,
                               const int64_t *y, const int64_t *present, const int64_t *rows,
                               const int64_t *nearest, const REAL *centroid, const REAL *work, double delta_v,
                               double delta_d, double ca, double cb, double cg, double g, REAL *S,
                               REAL *grad_f, REAL *grad_mean, REAL *pair_grad, REAL *pair_gb, REAL *grad_b) {
    const REAL *mean = work, *counts = work + P * d, *keep = counts + P, *scale = keep + P;
    const REAL *dstar = scale + P, *nstar = dstar + P, *rnorm = nstar + P;
    const REAL dv = (REAL)delta_v, omega = P > 0 ? (REAL)(1.0 / (double)P) : (REAL)0;
    (void)scale;
    const REAL g_ce = (REAL)(g / (double)B);
    if (grad_b) memset(grad_b, 0, sizeof(REAL) * (size_t)K);
    for (long i = 0; i < B; i++) {
        REAL *si = S + i * K;
        for (long k = 0; k < K; k++) si[k] *= g_ce;
        si[y[i]] -= g_ce;
        if (grad_b) FN(axpy)(grad_b, (REAL)1, si, K);  /* ∂L/∂b = Σ_i ∂L/∂z_i (CE part) */
    }
    /* ∂L/∂m_p: reg and −Σ_i ∂/∂r_i (compactness); ∂/∂r_i goes to grad_f directly */
    const REAL g_reg = (REAL)(g * cg) * omega, g_cmp = (REAL)(g * ca) * omega;
    for (long p = 0; p < P; p++) {
        const REAL *cc = centroid + p * d;
        REAL nc = SQRT(FN(dot)(cc, cc, d)), a = nc > 0 ? g_reg / nc : (REAL)0;
        REAL *gm = grad_mean + p * d;
        for (long t = 0; t < d; t++) gm[t] = a * cc[t];
    }
    for (long i = 0; i < B; i++) {
        long p = rows[i];
        const REAL *fi = f + i * d, *cc = centroid + p * d;
        REAL *gf = grad_f + i * d, *gm = grad_mean + p * d, nr = rnorm[i], s = g_cmp / counts[p], a;
        if (dv == 0) a = 2 * s;
        else a = nr - dv > 0 ? 2 * s * (nr - dv) / nr : (REAL)0;
        FN(resid_grad)(fi, cc, a, d, gf, gm);
    }
    /* m = m̄ + μ (M − m̄) for seen classes: ∂/∂m̄ = κ ∂/∂m; margin: d* = numer/D */
    const REAL g_mar = (REAL)(g * cb) * omega;
    for (long p = 0; p < P; p++) {
        REAL *gm = grad_mean + p * d;
        for (long t = 0; t < d; t++) gm[t] *= keep[p];
        REAL *gc = pair_grad + p * d, *gj = pair_grad + (P + p) * d;
        const long c = present[p], j = nearest[p];
        memset(gc, 0, sizeof(REAL) * (size_t)d);
        memset(gj, 0, sizeof(REAL) * (size_t)d);
        pair_gb[p] = 0, pair_gb[P + p] = 0;
        if (j == c || !((REAL)delta_d - dstar[p] > 0)) continue;
        const REAL *wc = W + c * d, *wj = W + j * d, *mc = mean + p * d;
        REAL nrm = nstar[p], D = nrm > (REAL)1e-12 ? nrm : (REAL)1e-12, gd = -g_mar;
        /* ∂d/∂m̄ = Δ/D; ∂d/∂Δ = m̄/D − d Δ/(D ‖Δ‖) (the clamp passes no gradient); ∂d/∂b_c = 1/D */
        REAL a = gd / D, e = nrm >= (REAL)1e-12 && nrm > 0 ? -gd * dstar[p] / (D * nrm) : (REAL)0;
        FN(pair_grad)(wc, wj, mc, a, e, d, gm, gc, gj);
        if (bias) pair_gb[p] = a, pair_gb[P + p] = -a;
    }
    for (long i = 0; i < B; i++) FN(axpy)(grad_f + i * d, (REAL)1 / counts[rows[i]], grad_mean + rows[i] * d, d);
}

/* grad_W[present[p]] += pair_grad[p], grad_W[nearest[p]] += pair_grad[P + p] (and bias) */
void FN(lmdl_present_scatter)(long d, long P, const int64_t *present, const int64_t *nearest,
                              const REAL *pair_grad, const REAL *pair_gb, REAL *grad_W, REAL *grad_b) {
    for (long p = 0; p < P; p++) {
        if (present[p] == nearest[p]) continue;
        FN(axpy)(grad_W + present[p] * d, (REAL)1, pair_grad + p * d, d);
        FN(axpy)(grad_W + nearest[p] * d, (REAL)1, pair_grad + (P + p) * d, d);
        if (grad_b) grad_b[present[p]] += pair_gb[p], grad_b[nearest[p]] += pair_gb[P + p];
    }
}

#undef LANES
#endif
