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
   clock reads inside), which is free of the clock's own overhead. */
double tp_time_calls(tp_kernel actor, const float *obs, int n_obs, int calls, double *per_call_ns)
{
    float actions[TP_ACT_DIM];
    double start, total;
    int c;

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
    return total / calls;
}
