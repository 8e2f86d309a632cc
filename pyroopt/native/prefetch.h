/* Software prefetch for the blocked loops (vsqrt.h): each block asks for its streams'
 * data a little ahead of where it reads.
 *
 * A blocked loop reads its streams (gradient, parameter, moments) for one block, then
 * spends a while on the block's roots in L1 without touching memory, then reads again.
 * The hardware prefetchers did not keep memory busy through that. Measured on 10 x 1M
 * float32 elements, 2 threads (Xeon with AVX-512), pyroopt's step over torch's fused
 * Adam on one flat tensor of the same elements, median of 41 back-to-back pairs, two
 * runs, before -> with prefetch:
 *
 *     Adam 1.10 -> 0.96-0.98      ClippedAdam 1.15-1.19 -> 0.94-0.97
 *     Adagrad 1.20-1.22 -> 0.96-0.97      RMSprop 0.85-0.87 -> 0.70
 *     AdagradRMSProp 0.87-0.88 -> 0.71
 *
 * Each block prefetches, for every stream, the block that lies PYROOPT_PREFETCH_BYTES
 * ahead. For Adam alone on one flat tensor, against the same limit: 2048 and 3072
 * bytes ahead were no better than 2560 (0.98-1.01), 1024 and 4096 worse (1.05 and
 * 1.08-1.13), and in cache (262144 elements) it changed nothing. The single-pass
 * loops (SGD, Rprop) gain nothing from it (the hardware follows them). A prefetch is
 * only a hint: it changes no value and never faults, and the loops ask only for
 * memory inside their arrays.
 */
#ifndef PYROOPT_PREFETCH_H
#define PYROOPT_PREFETCH_H

#include <stdint.h>

#include "element.h"

#ifndef PYROOPT_PREFETCH_BYTES /* -D overrides it, to measure another */
#define PYROOPT_PREFETCH_BYTES 2560
#endif
#define PYROOPT_CACHE_LINE 64

/* Whether, for the block of `block` elements at element `lo` of an array of `n`
 * elements, the block-long window PYROOPT_PREFETCH_BYTES ahead lies inside the array. */
static inline __attribute__((always_inline)) int prefetch_fits(int64_t lo, int64_t n,
                                                               int64_t block) {
    return lo + (int64_t)(PYROOPT_PREFETCH_BYTES / sizeof(scalar_t)) + block <= n;
}

/* Prefetch, into every cache level, the `length` elements that start
 * PYROOPT_PREFETCH_BYTES after `block`, which the loop will read (and not write). */
static inline __attribute__((always_inline)) void prefetch_to_read(const scalar_t *block,
                                                                   int64_t length) {
    const char *ahead = (const char *)block + PYROOPT_PREFETCH_BYTES;
    for (int64_t at = 0; at < length * (int64_t)sizeof(scalar_t); at += PYROOPT_CACHE_LINE)
        __builtin_prefetch(ahead + at, 0, 3);
}

/* The same for elements the loop will write. */
static inline __attribute__((always_inline)) void prefetch_to_write(const scalar_t *block,
                                                                    int64_t length) {
    const char *ahead = (const char *)block + PYROOPT_PREFETCH_BYTES;
    for (int64_t at = 0; at < length * (int64_t)sizeof(scalar_t); at += PYROOPT_CACHE_LINE)
        __builtin_prefetch(ahead + at, 1, 3);
}

/* For the block of `block` elements at element `lo` of arrays of `n` elements, where
 * the window ahead lies inside them: prefetch it for the stream the loop reads and for
 * each stream it writes (NULL: a stream the loop has not under its options). */
static inline __attribute__((always_inline)) void prefetch_ahead(int64_t lo, int64_t n,
                                                                 int64_t block,
                                                                 const scalar_t *read,
                                                                 const scalar_t *write0,
                                                                 const scalar_t *write1,
                                                                 const scalar_t *write2,
                                                                 const scalar_t *write3) {
    if (!prefetch_fits(lo, n, block)) return;
    prefetch_to_read(read, block);
    if (write0) prefetch_to_write(write0, block);
    if (write1) prefetch_to_write(write1, block);
    if (write2) prefetch_to_write(write2, block);
    if (write3) prefetch_to_write(write3, block);
}

#endif
