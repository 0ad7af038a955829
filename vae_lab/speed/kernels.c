/* The CPU kernels of vae_lab's layers: fast dropout's random words (counter_words, at the end);
   ReLU, BatchNorm (training) and fast dropout of one encoder block, one pass over memory each way;
   and the decoder's last layer, a 3x3 convolution from many channels to one (one_channel_conv).

   vae_lab/speed/kernels.py compiles this file at first use and vae_lab/speed/layers.py
   (ReluBatchNormDropout, OneChannelConvTranspose2d) calls it. Every tensor of many channels is n
   rows of c channels: a channels_last (NHWC) float32 batch, n = batch * height * width. For the
   encoder blocks, y is the convolution's output before the ReLU; the dropout integers r are the
   16-bit integers that FastDropout draws, one per element in memory order: an element is kept
   where its integer is below `threshold`, and then scaled by `scale`.
   Per-channel sums are kept in float over blocks of rows and added up in double.
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

/* The one-channel convolution: 3x3 taps, stride 1, zero padding 1 ('same'), from c channels to one.
   Pixel p = (image, i, j); tap d = (di, dj), each of -1, 0, 1, stored at taps[(di + 1) * 3 + dj + 1].
   The channels go LANES at a time as one vector of gcc's vector extension (c must be a multiple of
   LANES): a loop over a row's c channels left gcc's vectoriser scalar code between the taps. LANES
   is the CPU's widest vector of floats: a wider one, which the CPU has no instructions for, is
   split into pieces through memory, many times slower (16 lanes built for AVX2). */
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4 /* SSE, NEON */
#endif
typedef float lanes __attribute__((vector_size(4 * LANES), aligned(4))); /* loads from any float */
#define LANES_AT(pointer) (*(lanes *)(pointer))

static inline int inside(int64_t index, int64_t size) { return index >= 0 && index < size; }

/* out[p] = bias + sum over taps d and channels k of x[p + d, k] * taps[d, k]; x is (b, h, w, c). */
void one_channel_conv(const float *restrict x, const float *restrict taps, float bias, float *restrict out,
                      int64_t b, int64_t h, int64_t w, int64_t c, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < b * h; row++) {
        int64_t image = row / h, i = row % h;
        for (int64_t j = 0; j < w; j++) {
            lanes acc = {0};
            for (int di = -1; di <= 1; di++) {
                if (!inside(i + di, h)) continue;
                for (int dj = -1; dj <= 1; dj++) {
                    if (!inside(j + dj, w)) continue;
                    const float *xs = x + ((image * h + i + di) * w + j + dj) * c;
                    const float *t = taps + ((di + 1) * 3 + dj + 1) * c;
                    for (int64_t k = 0; k < c; k += LANES) acc += LANES_AT(xs + k) * LANES_AT(t + k);
                }
            }
            float sum = bias; /* lane by lane: measured faster here than in halves */
            for (int lane = 0; lane < LANES; lane++) sum += acc[lane];
            out[row * w + j] = sum;
        }
    }
}

/* grad_x[q, k] = sum over taps d of grad[q - d] * taps[d, k]: one_channel_conv's input gradient. */
void one_channel_conv_input_grad(const float *restrict grad, const float *restrict taps, float *restrict grad_x,
                                 int64_t b, int64_t h, int64_t w, int64_t c, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < b * h; row++) {
        int64_t image = row / h, i = row % h;
        for (int64_t j = 0; j < w; j++)
            for (int64_t k = 0; k < c; k += LANES) {
                lanes acc = {0};
                for (int di = -1; di <= 1; di++)
                    for (int dj = -1; dj <= 1; dj++) {
                        if (!inside(i - di, h) || !inside(j - dj, w)) continue;
                        float g = grad[(image * h + i - di) * w + j - dj];
                        acc += g * LANES_AT(taps + ((di + 1) * 3 + dj + 1) * c + k);
                    }
                LANES_AT(grad_x + (row * w + j) * c + k) = acc;
            }
    }
}

/* grad_taps[d, k] = sum over pixels p of grad[p] * x[p + d, k] (9 x c, in double): the taps' gradient.
   Row by row and tap by tap, so that a tap's sum over a row's pixels stays in a register. */
void one_channel_conv_taps_grad(const float *restrict grad, const float *restrict x, double *restrict grad_taps,
                                int64_t b, int64_t h, int64_t w, int64_t c, int threads) {
    for (int64_t k = 0; k < 9 * c; k++) grad_taps[k] = 0.0;
#pragma omp parallel num_threads(threads)
    {
        double *total = calloc(9 * c, sizeof(double));
#pragma omp for schedule(static)
        for (int64_t row = 0; row < b * h; row++) {
            int64_t image = row / h, i = row % h;
            const float *g = grad + row * w;
            for (int di = -1; di <= 1; di++) {
                if (!inside(i + di, h)) continue;
                const float *line = x + (image * h + i + di) * w * c;
                for (int dj = -1; dj <= 1; dj++)
                    for (int64_t k = 0; k < c; k += LANES) {
                        lanes acc = {0};
                        for (int64_t j = dj < 0 ? 1 : 0; j < (dj > 0 ? w - 1 : w); j++)
                            acc += g[j] * LANES_AT(line + (j + dj) * c + k);
                        double *sum = total + ((di + 1) * 3 + dj + 1) * c + k;
                        for (int lane = 0; lane < LANES; lane++) sum[lane] += acc[lane];
                    }
            }
        }
#pragma omp critical
        for (int64_t k = 0; k < 9 * c; k++) grad_taps[k] += total[k];
        free(total);
    }
}

/* words[i] = SplitMix64's (i + 1)-th output from `seed`: uniform 64-bit words, each computed from its
   index alone, so the threads fill their shares at once (torch's CPU generator draws one word after
   another on one thread). vae_lab/speed/layers.py (counter_words) computes the same words with
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
