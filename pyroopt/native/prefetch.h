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

#include "vsqrt.h"

#define PYROOPT_PREFETCH_BYTES 2560
#define PYROOPT_CACHE_LINE 64

/* Whether, for the block at element `lo` of an array of `n` elements of type T, the
 * block-long window PYROOPT_PREFETCH_BYTES ahead lies inside the array. */
#define PYROOPT_AHEAD_FITS(lo, n, T)                                                   \
    ((lo) + (int64_t)(PYROOPT_PREFETCH_BYTES / sizeof(T)) + PYROOPT_SQRT_BLOCK <= (n))

/* Prefetch, into every cache level, the PYROOPT_SQRT_BLOCK elements that start
 * PYROOPT_PREFETCH_BYTES after `block` (a typed pointer); `write` (a constant): 1
 * where the loop will write them. */
#define PYROOPT_PREFETCH_AHEAD(block, write)                                           \
    do {                                                                               \
        const char *ahead_ = (const char *)(block) + PYROOPT_PREFETCH_BYTES;           \
        for (int64_t at_ = 0; at_ < PYROOPT_SQRT_BLOCK * (int64_t)sizeof(*(block));    \
             at_ += PYROOPT_CACHE_LINE)                                                \
            __builtin_prefetch(ahead_ + at_, write, 3);                                \
    } while (0)

#endif
