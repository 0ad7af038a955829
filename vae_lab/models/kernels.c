/* The CPU kernels of vae_lab's layers: fast dropout's random words (counter_words, at the end), and
   ReLU, BatchNorm (training) and fast dropout of one encoder block, one pass over memory each way.

   vae_lab/models/native.py compiles this file at first use and vae_lab/models/layers.py
   (ReluBatchNormDropout) calls it. Every tensor is n rows of c channels: a channels_last (NHWC)
   float32 batch, n = batch * height * width. y is the convolution's output before the ReLU; the
   dropout integers r are the 16-bit integers that FastDropout draws, one per element in memory
   order: an element is kept where its integer is below `threshold`, and then scaled by `scale`.
   Per-channel sums are kept in float over blocks of BLOCK rows and added up in double.
   Each function splits the rows over `threads` OpenMP threads (torch's own runtime, libgomp).
*/
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 64

static inline float relu(float v) { return v < 0.0f ? 0.0f : v; } /* NaN stays NaN, as in torch.relu */

/* Dropout's factor: scale where the element's integer is below threshold, else 0. A product, not a
   branch or a select between widths: it vectorises with AVX2 as with AVX-512 (a select from 16-bit
   integers into floats did not, and ran branch by branch), and a NaN stays NaN where it is dropped,
   as in x * mask. */
static inline float kept(int16_t integer, int threshold, float scale) {
    return (float)(integer < threshold) * scale;
}

/* One thread's two per-channel sums: in float over up to BLOCK rows, those added up in double. */
typedef struct {
    int64_t c, rows;
    float *block;  /* 2c: the first sum's channels, then the second's */
    double *total; /* 2c, likewise */
} Sums;

static Sums sums_start(int64_t c) {
    Sums sums = {c, 0, calloc(2 * c, sizeof(float)), calloc(2 * c, sizeof(double))};
    return sums;
}

static void sums_flush(Sums *sums) {
    for (int64_t j = 0; j < 2 * sums->c; j++) sums->total[j] += sums->block[j], sums->block[j] = 0.0f;
    sums->rows = 0;
}

static inline void sums_row_done(Sums *sums) {
    if (++sums->rows == BLOCK) sums_flush(sums);
}

/* Add this thread's sums into first and second (c each), one thread at a time. */
static void sums_finish(Sums *sums, double *first, double *second) {
    sums_flush(sums);
#pragma omp critical
    for (int64_t j = 0; j < sums->c; j++) first[j] += sums->total[j], second[j] += sums->total[sums->c + j];
    free(sums->block);
    free(sums->total);
}

/* Per-channel sums of (relu(y) - shift) and of its square: the batch's mean and variance without
   the cancellation of E[v^2] - E[v]^2 when shift (one row of the batch) is near the mean. */
void relu_shifted_sums(const float *y, int64_t n, int64_t c, const float *shift, double *sum,
                       double *sum_sq, int threads) {
    for (int64_t j = 0; j < c; j++) sum[j] = sum_sq[j] = 0.0;
#pragma omp parallel num_threads(threads)
    {
        Sums sums = sums_start(c);
        float *s = sums.block, *q = sums.block + c;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            const float *row = y + i * c;
            for (int64_t j = 0; j < c; j++) {
                float v = relu(row[j]) - shift[j];
                s[j] += v;
                q[j] += v * v;
            }
            sums_row_done(&sums);
        }
        sums_finish(&sums, sum, sum_sq);
    }
}

/* out = kept ? (relu(y) * a + b) * scale : 0, with a = weight / std and b = bias - mean * a. */
void normalise_and_drop(const float *y, const int16_t *r, float *out, int64_t n, int64_t c, const float *a,
                        const float *b, int threshold, float scale, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *row = y + i * c;
        const int16_t *ri = r + i * c;
        float *o = out + i * c;
        for (int64_t j = 0; j < c; j++) o[j] = (relu(row[j]) * a[j] + b[j]) * kept(ri[j], threshold, scale);
    }
}

/* Per-channel sums of g and of g * (relu(y) - mean), g = kept ? grad_out * scale : 0 (the gradient
   at BatchNorm's output): BatchNorm's bias and weight gradients, and what its input gradient needs. */
void backward_sums(const float *y, const int16_t *r, const float *grad_out, int64_t n, int64_t c,
                   const float *mean, int threshold, float scale, double *sum_g, double *sum_g_centred,
                   int threads) {
    for (int64_t j = 0; j < c; j++) sum_g[j] = sum_g_centred[j] = 0.0;
#pragma omp parallel num_threads(threads)
    {
        Sums sums = sums_start(c);
        float *s = sums.block, *q = sums.block + c;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            const float *row = y + i * c, *go = grad_out + i * c;
            const int16_t *ri = r + i * c;
            for (int64_t j = 0; j < c; j++) {
                float g = go[j] * kept(ri[j], threshold, scale);
                s[j] += g;
                q[j] += g * (relu(row[j]) - mean[j]);
            }
            sums_row_done(&sums);
        }
        sums_finish(&sums, sum_g, sum_g_centred);
    }
}

/* grad_y = y <= 0 ? 0 : (g - mean_g - (y - mean) * k) * a (torch's ReLU gradient, NaN passed on):
   BatchNorm's input gradient, with
   mean_g = sum_g / n, k = sum_g_centred / (n * var + eps) and a = weight / std, through the ReLU. */
void backward_input(const float *y, const int16_t *r, const float *grad_out, float *grad_y, int64_t n,
                    int64_t c, const float *mean, const float *mean_g, const float *k, const float *a,
                    int threshold, float scale, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *row = y + i * c, *go = grad_out + i * c;
        const int16_t *ri = r + i * c;
        float *gy = grad_y + i * c;
        for (int64_t j = 0; j < c; j++) {
            float g = go[j] * kept(ri[j], threshold, scale);
            gy[j] = row[j] <= 0.0f ? 0.0f : (g - mean_g[j] - (row[j] - mean[j]) * k[j]) * a[j];
        }
    }
}

/* words[i] = SplitMix64's (i + 1)-th output from `seed`: uniform 64-bit words, each computed from its
   index alone, so the threads fill their shares at once (torch's CPU generator draws one word after
   another on one thread). vae_lab/models/layers.py (counter_words) computes the same words with
   torch operations where this library is not at hand. */
void counter_words(uint64_t *words, int64_t count, uint64_t seed, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < count; i++) {
        uint64_t z = seed + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        words[i] = z ^ (z >> 31);
    }
}
