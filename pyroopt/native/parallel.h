/* Splitting one update over many tensors across the threads of torch's own pool.
 *
 * A kernel sees the elements of all its tensors as one range, the tensors laid end to
 * end in the order given. `pyroopt_parallel` cuts that range into `n_threads` equal
 * parts (fewer when a part would hold under `min_per_thread` elements; at most
 * PYROOPT_MAX_THREADS) and calls `range(ctx, k, lo, hi)` for each piece of tensor `k`
 * that a part covers: elements [lo, hi) of that tensor. A part never splits an
 * element, and the values of an element never depend on which part computes it, so
 * the thread count changes no number. Returns the number of parts run.
 *
 * The parts run on a team of torch's OpenMP runtime (the calling thread is member 0),
 * the same threads torch's own CPU kernels run on, so a loop neither starts threads
 * nor competes with torch's spinning workers. The runtime is handed over once with
 * `pyroopt_use_openmp`; until then (or if none is found) every call runs on the
 * calling thread alone.
 *
 * Every part runs with MKL set to its own thread (`pyroopt_use_mkl`): a loop's square
 * roots must not open MKL's own parallel regions, which they do on the calling thread
 * and, once torch.set_num_threads has run (it turns MKL's dynamic adjustment off),
 * also nested in a member of the team (Adam on 10 x 1M float32 elements: 6.6 ms
 * before a set_num_threads(1), (2), 24 ms after).
 */
#ifndef PYROOPT_PARALLEL_H
#define PYROOPT_PARALLEL_H

#include <stdint.h>

#define PYROOPT_MAX_THREADS 64

typedef void (*pyroopt_range_fn)(const void *ctx, int64_t k, int64_t lo, int64_t hi);

int pyroopt_parallel(int64_t n_tensors, const int64_t *numels, int n_threads,
                     int64_t min_per_thread, pyroopt_range_fn range, const void *ctx);

/* The OpenMP runtime's `GOMP_parallel`, `omp_get_thread_num` and
 * `omp_get_num_threads` (libgomp's ABI, which LLVM's and Intel's runtimes also
 * export), as loaded by torch; any NULL: threads off. Called before any loop runs. */
void pyroopt_use_openmp(void *gomp_parallel, void *get_thread_num, void *get_num_threads);

/* MKL's Fortran-style `mkl_set_num_threads_local` (takes a pointer to the count,
 * returns the one it replaces), as loaded by torch; NULL: torch has no MKL. */
void pyroopt_use_mkl(void *set_num_threads_local);

/* The loops are compiled for the baseline instruction set and for wider vectors, one
 * of which is picked at load time for the CPU at hand (GCC on x86-64 Linux). The AVX2
 * clone is x86-64-v3 (AVX2 with FMA, as AVX-512F brings it): under AVX2 alone, GCC
 * calls libm's fmaf for every fused multiply-add, and Adam ran 6-7x slower (measured:
 * 3.7-4.6 against 0.63 ns per float32 element in cache). `flatten` takes every call
 * in line that a clone's instructions allow, the Newton root's forms included
 * (newton_lanes.h). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#if __GNUC__ >= 11
#define PYROOPT_AVX2_CLONE "arch=x86-64-v3"
#else
#define PYROOPT_AVX2_CLONE "arch=haswell"
#endif
#define PYROOPT_VECTOR_CLONES                                                          \
    __attribute__((target_clones("avx512f", PYROOPT_AVX2_CLONE, "default"), flatten))
#else
#define PYROOPT_VECTOR_CLONES
#endif

#endif
