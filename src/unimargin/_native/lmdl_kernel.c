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
#define FN(name) name##_f32
#define EXP expf
#define LOG logf
#define SQRT sqrtf
#include "lmdl_kernel.c" /* this file again, for the next REAL */
#undef REAL
#undef FN
#undef EXP
#undef LOG
#undef SQRT
#define REAL double
#define FN(name) name##_f64
#define EXP exp
#define LOG log
#define SQRT sqrt
#include "lmdl_kernel.c" /* this file again, for the next REAL */
#undef REAL
#undef FN
#undef EXP
#undef LOG
#undef SQRT

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

#undef LANES
#endif
