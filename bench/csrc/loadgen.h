/*
 * The timing loop both load generators share: THREADS threads sign until COUNT signatures are made
 * or SECONDS have passed, each signature's latency is kept, and a progress line goes to stderr
 * every 200 ms ("progress DONE ERRORS") for a live display. At the end one JSON object goes to
 * stdout: {"signs":N,"errors":E,"seconds":T,"cpu_seconds":C,"latencies_us":[...]}, where C is the
 * process's user + system CPU over the timed part only (what the host spends per signature).
 *
 * A generator defines `static void *worker_setup(int index)` (per-thread state, NULL on failure)
 * and `static int sign_once(void *state)` (1 on success), then calls run_load(). C, not Python:
 * what is measured is the library, not the load generator's interpreter.
 */
#include <pthread.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void *worker_setup(int index);
static int sign_once(void *state);

static long load_target;        /* signatures to make, or 0 with load_seconds */
static double load_seconds;
static long load_done, load_errors, load_kept;
static unsigned *load_latencies; /* microseconds, the first load_capacity signatures */
static long load_capacity;
static double load_start;
static int load_finished;            /* threads that have left their loop */
static int load_setup_failed;        /* a thread could not set up: the run is not what was asked */
static pthread_barrier_t load_ready; /* every thread has set up (sessions, key lookup, Python boot) */
static unsigned load_pause_us;       /* a generator may set it: an untimed pause after each call (a probe
                                      * that samples latency over time instead of as fast as it can) */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_now(void)
{
    struct rusage use;
    getrusage(RUSAGE_SELF, &use);
    return (double)use.ru_utime.tv_sec + (double)use.ru_utime.tv_usec / 1e6 + (double)use.ru_stime.tv_sec +
           (double)use.ru_stime.tv_usec / 1e6;
}

static int load_more(void)
{
    if (load_target)
        return __atomic_add_fetch(&load_done, 1, __ATOMIC_RELAXED) <= load_target;
    if (now() - load_start >= load_seconds)
        return 0;
    __atomic_add_fetch(&load_done, 1, __ATOMIC_RELAXED);
    return 1;
}

static void *load_thread(void *arg)
{
    void *state = worker_setup((int)(long)arg);
    if (!state)
        __atomic_store_n(&load_setup_failed, 1, __ATOMIC_RELAXED);
    pthread_barrier_wait(&load_ready); /* set-up is not timed */
    pthread_barrier_wait(&load_ready); /* ... and load_start is set */
    while (state && load_more()) {
        double begin = now();
        int ok = state && sign_once(state);
        unsigned us = (unsigned)((now() - begin) * 1e6);
        if (!ok) {
            __atomic_add_fetch(&load_errors, 1, __ATOMIC_RELAXED);
            continue;
        }
        long slot = __atomic_fetch_add(&load_kept, 1, __ATOMIC_RELAXED);
        if (slot < load_capacity)
            load_latencies[slot] = us;
        if (load_pause_us)
            usleep(load_pause_us);
    }
    __atomic_add_fetch(&load_finished, 1, __ATOMIC_RELEASE);
    return NULL;
}

static int run_load(int threads, const char *amount)
{
    pthread_t ids[256];
    if (threads < 1 || threads > 256)
        return 2;
    if (amount[0] == 't') /* "t5" : five seconds */
        load_seconds = atof(amount + 1);
    else
        load_target = atol(amount);
    load_capacity = load_target ? load_target : 2000000;
    load_latencies = calloc((size_t)load_capacity, sizeof(*load_latencies));
    pthread_barrier_init(&load_ready, NULL, (unsigned)threads + 1);
    for (int i = 0; i < threads; i++)
        pthread_create(&ids[i], NULL, load_thread, (void *)(long)i);
    pthread_barrier_wait(&load_ready);
    double cpu_start = cpu_now();
    load_start = now();
    pthread_barrier_wait(&load_ready);
    int joined = 0;
    while (joined < threads) {
        struct timespec tick = {0, 200000000};
        nanosleep(&tick, NULL);
        long done = __atomic_load_n(&load_kept, __ATOMIC_RELAXED), errors = __atomic_load_n(&load_errors, __ATOMIC_RELAXED);
        fprintf(stderr, "progress %ld %ld\n", done, errors);
        fflush(stderr);
        if ((load_target && done + errors >= load_target) || (!load_target && now() - load_start >= load_seconds) ||
            __atomic_load_n(&load_finished, __ATOMIC_ACQUIRE) == threads) {
            for (; joined < threads; joined++)
                pthread_join(ids[joined], NULL);
        }
    }
    if (load_setup_failed)
        return 1; /* the generator said why on stderr */
    double seconds = now() - load_start, cpu = cpu_now() - cpu_start;
    long kept = load_kept < load_capacity ? load_kept : load_capacity;
    printf("{\"signs\":%ld,\"errors\":%ld,\"seconds\":%.6f,\"cpu_seconds\":%.6f,\"latencies_us\":[", load_kept,
           load_errors, seconds, cpu);
    for (long i = 0; i < kept; i++)
        printf("%s%u", i ? "," : "", load_latencies[i]);
    printf("]}\n");
    return 0;
}
