/* Timing harness for the generated kernels, compiled into the same shared library as
   the kernels so that the timed loop contains no Python. */
#define _POSIX_C_SOURCE 199309L
#include <time.h>

#include "actor.h"

typedef void (*tp_kernel)(const float *obs, float *actions);

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* Keeps the compiler from dropping calls whose results are unused. */
volatile float tp_timer_sink;

/* Times `calls` calls of `actor` (any kernel with the tp_actor signature, also one from
   another library), cycling through `n_obs` observations: per_call_ns[c] gets each call's
   own time. Returns the mean time per call of a second, untimed loop of `calls` calls (no
   clock reads inside), which is free of the clock's own overhead but lets the out-of-order
   core overlap a call with the next (a throughput). *chained_mean_ns gets the mean of a
   third loop in which each call's observation depends on the previous call's action, as in
   a control loop, so that calls cannot overlap: a latency free of the clock's overhead (which,
   at about 20 ns, is a third of a 60 ns call). */
double tp_time_calls(tp_kernel actor, const float *obs, int n_obs, int calls, double *per_call_ns,
                     double *chained_mean_ns)
{
    float actions[TP_ACT_DIM], chained[TP_OBS_DIM];
    double start, total;
    int c, i;

    for (c = 0; c < calls / 10 + 1; ++c) /* warm-up: caches and branch predictors */
        actor(obs + (c % n_obs) * TP_OBS_DIM, actions);
    for (c = 0; c < calls; ++c) {
        start = now_ns();
        actor(obs + (c % n_obs) * TP_OBS_DIM, actions);
        per_call_ns[c] = now_ns() - start;
        tp_timer_sink = actions[0];
    }
    start = now_ns();
    for (c = 0; c < calls; ++c) {
        actor(obs + (c % n_obs) * TP_OBS_DIM, actions);
        tp_timer_sink = actions[0];
    }
    total = now_ns() - start;
    actions[0] = 0.0f;
    start = now_ns();
    for (c = 0; c < calls; ++c) {
        const float *o = obs + (c % n_obs) * TP_OBS_DIM;
        /* x * 0 is not folded without -ffast-math (x may be inf or NaN); actions are finite */
        const float dependency = actions[0] * 0.0f;
        for (i = 0; i < TP_OBS_DIM; ++i)
            chained[i] = o[i] + dependency;
        actor(chained, actions);
    }
    *chained_mean_ns = (now_ns() - start) / calls;
    tp_timer_sink = actions[0];
    return total / calls;
}
