/* See parallel.h. */
#include "parallel.h"

#include <stddef.h>

typedef void (*gomp_parallel_fn)(void (*fn)(void *), void *data, unsigned n_threads,
                                 unsigned flags);
typedef int (*omp_query_fn)(void);
typedef int (*mkl_local_fn)(const int *count);

static gomp_parallel_fn team_run = NULL;
static omp_query_fn team_member = NULL, team_size = NULL;
static mkl_local_fn mkl_local = NULL;

void pyroopt_use_mkl(void *set_num_threads_local) {
    mkl_local = (mkl_local_fn)set_num_threads_local;
}

void pyroopt_use_openmp(void *gomp_parallel, void *get_thread_num, void *get_num_threads) {
    int all = gomp_parallel && get_thread_num && get_num_threads;
    team_run = all ? (gomp_parallel_fn)gomp_parallel : NULL;
    team_member = all ? (omp_query_fn)get_thread_num : NULL;
    team_size = all ? (omp_query_fn)get_num_threads : NULL;
}

typedef struct {
    int64_t n_tensors;
    const int64_t *numels;
    int64_t total; /* elements of the concatenation of all tensors */
    pyroopt_range_fn range;
    const void *ctx;
    int team; /* as large as the runtime made it; written by member 0 */
} job;

/* Calls `range` for every piece of tensor that the part [begin, end) of the
 * concatenation covers, with MKL on this thread alone. */
static void run_part(const job *j, int64_t begin, int64_t end) {
    const int one = 1;
    int before = mkl_local ? mkl_local(&one) : 0;
    int64_t offset = 0; /* of tensor k in the concatenation */
    for (int64_t k = 0; k < j->n_tensors && offset < end; ++k) {
        int64_t lo = begin > offset ? begin - offset : 0;
        int64_t hi = end - offset < j->numels[k] ? end - offset : j->numels[k];
        if (lo < hi) j->range(j->ctx, k, lo, hi);
        offset += j->numels[k];
    }
    if (mkl_local) mkl_local(&before);
}

/* One member's part; the team may be smaller than asked for, and its parts then
 * cover the range between them. */
static void run_member(void *arg) {
    job *j = arg;
    int64_t t = team_member(), n = team_size();
    if (t == 0) j->team = (int)n;
    run_part(j, j->total * t / n, j->total * (t + 1) / n);
}

int pyroopt_parallel(int64_t n_tensors, const int64_t *numels, int n_threads,
                     int64_t min_per_thread, pyroopt_range_fn range, const void *ctx) {
    job j = {n_tensors, numels, 0, range, ctx, 1};
    for (int64_t k = 0; k < n_tensors; ++k) j.total += numels[k];
    int64_t useful = j.total / (min_per_thread > 0 ? min_per_thread : 1);
    if (n_threads > useful) n_threads = (int)useful;
    if (n_threads > PYROOPT_MAX_THREADS) n_threads = PYROOPT_MAX_THREADS;
    if (n_threads > 1 && team_run) {
        team_run(run_member, &j, (unsigned)n_threads, 0);
        return j.team;
    }
    run_part(&j, 0, j.total);
    return 1;
}
