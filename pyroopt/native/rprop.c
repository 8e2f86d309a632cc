/* Rprop over many tensors in one pass over memory, with torch's numerics.
 *
 * For every element, with g negated first under `maximize`, and step = lr on a
 * tensor's first step (`fresh`, where prev is still 0):
 *
 *     s  = g * prev
 *     f  = eta_plus if s > 0, eta_minus if s < 0, else 1   (NaN s counts as 0)
 *     step = clamp(step * f, step_min, step_max)           (NaN stays NaN)
 *     g  = 0 if s < 0
 *     param = param + (-sign(g)) * step                    (sign(NaN) = 0)
 *     prev = g
 *
 * which is torch.optim.Rprop's single-tensor update, operation for operation in the
 * tensor's own precision, so results are bitwise equal to torch's.
 *
 * The elements of all tensors form one range that is split evenly over up to
 * `n_threads` POSIX threads (the caller passes torch's intra-op thread count), each
 * with at least `min_per_thread` elements; smaller calls run on the calling thread
 * alone. No Python or torch headers: the library is loaded
 * with ctypes and handed data pointers.
 */
#include <pthread.h>
#include <stdint.h>

#define MAX_THREADS 64

/* The loop is compiled for the baseline instruction set and for wider vectors, one
 * of which is picked at load time for the CPU at hand (GCC on x86-64 Linux). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#define DEFINE_RPROP(SUFFIX, T)                                                        \
    VECTOR_CLONES                                                                      \
    static void rprop_range_##SUFFIX(T *restrict param, const T *restrict grad,        \
                                     T *restrict prev, T *restrict step, int64_t n,    \
                                     int fresh, T lr, T eta_minus, T eta_plus,         \
                                     T step_min, T step_max, T direction) {            \
        for (int64_t i = 0; i < n; ++i) {                                              \
            T g = direction * grad[i];                                                 \
            T s = g * prev[i];                                                         \
            T f = s > 0 ? eta_plus : (s < 0 ? eta_minus : (T)1);                       \
            T st = (fresh ? lr : step[i]) * f;                                         \
            st = st < step_min ? step_min : st;                                        \
            st = st > step_max ? step_max : st;                                        \
            g = s < 0 ? (T)0 : g;                                                      \
            T sign_g = g > 0 ? (T)1 : (g < 0 ? (T)-1 : (T)0);                          \
            param[i] = param[i] + (-sign_g) * st;                                      \
            prev[i] = g;                                                               \
            step[i] = st;                                                              \
        }                                                                              \
    }                                                                                  \
                                                                                       \
    typedef struct {                                                                   \
        int64_t n_tensors;                                                             \
        T *const *params;                                                              \
        const T *const *grads;                                                         \
        T *const *prevs;                                                               \
        T *const *steps;                                                               \
        const int64_t *numels;                                                         \
        const unsigned char *fresh;                                                    \
        int64_t begin, end; /* elements of the concatenation of all tensors */         \
        T lr, eta_minus, eta_plus, step_min, step_max, direction;                      \
    } rprop_work_##SUFFIX;                                                             \
                                                                                       \
    static void *rprop_work_run_##SUFFIX(void *arg) {                                  \
        const rprop_work_##SUFFIX *w = arg;                                            \
        int64_t offset = 0; /* of tensor k in the concatenation */                     \
        for (int64_t k = 0; k < w->n_tensors && offset < w->end; ++k) {                \
            int64_t lo = w->begin > offset ? w->begin - offset : 0;                    \
            int64_t hi = w->end - offset < w->numels[k] ? w->end - offset              \
                                                        : w->numels[k];               \
            if (lo < hi)                                                               \
                rprop_range_##SUFFIX(w->params[k] + lo, w->grads[k] + lo,              \
                                     w->prevs[k] + lo, w->steps[k] + lo, hi - lo,      \
                                     w->fresh[k], w->lr, w->eta_minus, w->eta_plus,    \
                                     w->step_min, w->step_max, w->direction);          \
            offset += w->numels[k];                                                    \
        }                                                                              \
        return 0;                                                                      \
    }                                                                                  \
                                                                                       \
    int pyroopt_rprop_##SUFFIX(int64_t n_tensors, T *const *params,                    \
                               const T *const *grads, T *const *prevs,                 \
                               T *const *steps, const int64_t *numels,                 \
                               const unsigned char *fresh, double lr,                  \
                               double eta_minus, double eta_plus, double step_min,     \
                               double step_max, int maximize, int n_threads,           \
                               int64_t min_per_thread) {                               \
        int64_t total = 0;                                                             \
        for (int64_t k = 0; k < n_tensors; ++k) total += numels[k];                    \
        int64_t useful = total / (min_per_thread > 0 ? min_per_thread : 1);            \
        if (n_threads > useful) n_threads = (int)useful;                               \
        if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;                          \
        if (n_threads < 1) n_threads = 1;                                              \
        rprop_work_##SUFFIX work[MAX_THREADS];                                         \
        pthread_t threads[MAX_THREADS];                                                \
        for (int t = 0; t < n_threads; ++t) {                                          \
            rprop_work_##SUFFIX w = {n_tensors, params, grads, prevs, steps, numels,   \
                                     fresh, total * t / n_threads,                     \
                                     total * (t + 1) / n_threads, (T)lr,               \
                                     (T)eta_minus, (T)eta_plus, (T)step_min,           \
                                     (T)step_max, maximize ? (T)-1 : (T)1};            \
            work[t] = w;                                                               \
        }                                                                              \
        int started = 0;                                                               \
        for (int t = 1; t < n_threads; ++t) {                                          \
            if (pthread_create(&threads[t], 0, rprop_work_run_##SUFFIX, &work[t]))     \
                break;                                                                 \
            started = t;                                                               \
        }                                                                              \
        rprop_work_run_##SUFFIX(&work[0]);                                             \
        /* a thread that could not start: its range runs here */                      \
        for (int t = started + 1; t < n_threads; ++t) rprop_work_run_##SUFFIX(&work[t]); \
        for (int t = 1; t <= started; ++t) pthread_join(threads[t], 0);                \
        return n_threads;                                                              \
    }

DEFINE_RPROP(f32, float)
DEFINE_RPROP(f64, double)
