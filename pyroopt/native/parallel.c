/* See parallel.h. */
#include "parallel.h"

#include <pthread.h>

typedef struct {
    int64_t n_tensors;
    const int64_t *numels;
    int64_t begin, end; /* elements of the concatenation of all tensors */
    pyroopt_range_fn range;
    const void *ctx;
} part;

static void *run_part(void *arg) {
    const part *w = arg;
    int64_t offset = 0; /* of tensor k in the concatenation */
    for (int64_t k = 0; k < w->n_tensors && offset < w->end; ++k) {
        int64_t lo = w->begin > offset ? w->begin - offset : 0;
        int64_t hi = w->end - offset < w->numels[k] ? w->end - offset : w->numels[k];
        if (lo < hi) w->range(w->ctx, k, lo, hi);
        offset += w->numels[k];
    }
    return 0;
}

int pyroopt_parallel(int64_t n_tensors, const int64_t *numels, int n_threads,
                     int64_t min_per_thread, pyroopt_range_fn range, const void *ctx) {
    int64_t total = 0;
    for (int64_t k = 0; k < n_tensors; ++k) total += numels[k];
    int64_t useful = total / (min_per_thread > 0 ? min_per_thread : 1);
    if (n_threads > useful) n_threads = (int)useful;
    if (n_threads > PYROOPT_MAX_THREADS) n_threads = PYROOPT_MAX_THREADS;
    if (n_threads < 1) n_threads = 1;
    part parts[PYROOPT_MAX_THREADS];
    pthread_t threads[PYROOPT_MAX_THREADS];
    for (int t = 0; t < n_threads; ++t) {
        part w = {n_tensors, numels, total * t / n_threads, total * (t + 1) / n_threads,
                  range, ctx};
        parts[t] = w;
    }
    int started = 0;
    for (int t = 1; t < n_threads; ++t) {
        if (pthread_create(&threads[t], 0, run_part, &parts[t])) break;
        started = t;
    }
    run_part(&parts[0]);
    for (int t = started + 1; t < n_threads; ++t) run_part(&parts[t]);
    for (int t = 1; t <= started; ++t) pthread_join(threads[t], 0);
    return n_threads;
}
