/* See coefficients.h. */
#include "coefficients.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The coefficients of the step counts seen last, per thread.
 *
 * Parameters that appeared on consecutive steps keep consecutive step counts, so a
 * call's counts are, all but one, the counts of the call before: a memo of each
 * count's coefficients (direct-mapped by the count) spares the powers of all the others
 * (three `pow` cost about 50 ns a tensor, measured). An entry holds every input of its
 * function bit for bit, so what it gives is what the function computes. It is per
 * thread: the loops' threads, and Python threads that call loops at once, each have
 * their own. */
#define MEMO_SIZE 1024

/* which function, its three inputs (0 where it takes two), the step count */
typedef double memo_key[5];

typedef struct {
    memo_key key;
    double values[2];
    int filled;
} memo_entry;

static __thread memo_entry memo[MEMO_SIZE];

/* The entry for `key`, holding its values once `*found` or once filled. */
static memo_entry *memo_entry_for(const memo_key key, int *found) {
    memo_entry *entry = &memo[(uint64_t)key[4] % MEMO_SIZE];
    *found = entry->filled && memcmp(entry->key, key, sizeof(memo_key)) == 0;
    if (!*found) {
        memcpy(entry->key, key, sizeof(memo_key));
        entry->filled = 1;
    }
    return entry;
}

enum { ADAM = 1, CLIPPED_ADAM, ADAGRAD_RMSPROP };

void pyroopt_adam_coefficients(double lr, double beta1, double beta2, double t,
                               double *neg_step_size, double *bias_correction2_sqrt) {
    const memo_key key = {ADAM, lr, beta1, beta2, t};
    int found;
    memo_entry *entry = memo_entry_for(key, &found);
    if (!found) {
        entry->values[0] = -(lr / (1 - pow(beta1, t)));
        entry->values[1] = pow(1 - pow(beta2, t), 0.5);
    }
    *neg_step_size = entry->values[0];
    *bias_correction2_sqrt = entry->values[1];
}

double pyroopt_clipped_adam_neg_step_size(double lr, double beta1, double beta2, double t) {
    const memo_key key = {CLIPPED_ADAM, lr, beta1, beta2, t};
    int found;
    memo_entry *entry = memo_entry_for(key, &found);
    if (!found) entry->values[0] = -(lr * sqrt(1 - pow(beta2, t)) / (1 - pow(beta1, t)));
    return entry->values[0];
}

double pyroopt_adagrad_neg_lr(double lr, double lr_decay, double t) {
    return -(lr / (1 + (t - 1) * lr_decay)); /* no power: cheaper than a memo */
}

double pyroopt_adagrad_rmsprop_neg_lr(double eta, double delta, double t) {
    const memo_key key = {ADAGRAD_RMSPROP, eta, delta, 0, t};
    int found;
    memo_entry *entry = memo_entry_for(key, &found);
    if (!found) entry->values[0] = -(eta * pow(t, -0.5 + delta));
    return entry->values[0];
}
