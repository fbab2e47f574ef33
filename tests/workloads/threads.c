/*
 * threads [N] — a migration workload with N worker threads (4 unless given, at most 1024), to
 * show every thread survives a restore.
 *
 * Each worker adds 1 to its own counter every ~10 ms (~100 ms when N > 8), forever; counters
 * only ever increase. The main thread prints the first four counters and the total once a
 * second. On SIGUSR1 it takes a snapshot, waits 20 periods (200 ms or 2 s), and checks that
 * every worker's counter moved (i.e. every thread is running now).
 *
 * Output, one line each, flushed:
 *   threads ready
 *   threads t0=A t1=B t2=C t3=D total=T     (every ~1 s; T = the sum of all N)
 *   threads alive=N                          (after SIGUSR1: all N advanced within 20 periods)
 *   threads stuck=I[,J...]                   (after SIGUSR1: indices of workers that did not)
 *
 * SIGUSR1 is blocked in the workers, so it is always handled by the main thread; the handler
 * only sets a flag. Sleeps are relative nanosleeps (no absolute monotonic deadlines).
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -pthread -o threads threads.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXWORKERS 1024

static int nworkers = 4;
static long period_ms = 10;
static unsigned long counters[MAXWORKERS]; /* accessed with __atomic builtins only */
static volatile sig_atomic_t check_requested;

static void on_usr1(int sig) {
    (void)sig;
    check_requested = 1;
}

/* Sleeps ms milliseconds, resuming with the remaining time after EINTR unless the check flag
 * got set (then returns early so the main thread reacts promptly). */
static void sleep_ms(long ms, int stop_on_flag) {
    struct timespec req = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&req, &req) != 0 && errno == EINTR)
        if (stop_on_flag && check_requested)
            return;
}

static unsigned long get(int i) {
    return __atomic_load_n(&counters[i], __ATOMIC_RELAXED);
}

static void *worker(void *arg) {
    int i = (int)(long)arg;
    for (;;) {
        sleep_ms(period_ms, 0);
        __atomic_fetch_add(&counters[i], 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

/* SIGUSR1: did every worker advance during a 20-period window (20 expected increments each)? */
static void check_alive(void) {
    static unsigned long before[MAXWORKERS];
    for (int i = 0; i < nworkers; i++)
        before[i] = get(i);
    sleep_ms(20 * period_ms, 0);
    char stuck[64] = "";
    for (int i = 0; i < nworkers; i++)
        if (get(i) == before[i])
            snprintf(stuck + strlen(stuck), sizeof stuck - strlen(stuck), "%s%d", stuck[0] ? "," : "", i);
    if (stuck[0])
        printf("threads stuck=%s\n", stuck);
    else
        printf("threads alive=%d\n", nworkers);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc > 1) {
        nworkers = atoi(argv[1]);
        if (nworkers < 4 || nworkers > MAXWORKERS) {
            fprintf(stderr, "threads: N must be 4..%d, not %s\n", MAXWORKERS, argv[1]);
            return 2;
        }
    }
    if (nworkers > 8)
        period_ms = 100;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART: nanosleep returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);

    /* Workers inherit the signal mask: block SIGUSR1 while creating them, then unblock here. */
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    pthread_attr_t small;
    pthread_attr_init(&small);
    pthread_attr_setstacksize(&small, 64 * 1024);
    for (long i = 0; i < nworkers; i++) {
        pthread_t t;
        int err = pthread_create(&t, &small, worker, (void *)i);
        if (err != 0) {
            fprintf(stderr, "pthread_create: %s\n", strerror(err));
            return 1;
        }
    }
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);

    printf("threads ready\n");
    fflush(stdout);

    for (;;) {
        sleep_ms(1000, 1);
        if (check_requested) {
            check_requested = 0;
            check_alive();
            continue; /* the periodic line comes after the next full second */
        }
        static unsigned long c[MAXWORKERS];
        unsigned long total = 0;
        for (int i = 0; i < nworkers; i++)
            total += c[i] = get(i);
        printf("threads t0=%lu t1=%lu t2=%lu t3=%lu total=%lu\n", c[0], c[1], c[2], c[3], total);
        fflush(stdout);
    }
}
