/*
 * Sample cooperative program: a counter whose value survives migration.
 *
 * Counts up every 100 ms, printing "count N". On checkpoint it writes the number to state.txt;
 * on a migration target it reads it back and prints "restored count=N". See coop/test.sh.
 *
 *   gcc -Wall -Wextra -Werror -O2 -pthread coop/examples/counter.c -o counter
 */
#include "../c/ferry_coop.h"

#include <time.h>

#define STATE_FILE "state.txt"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long count;

/* Writes a temporary file and renames it, so state.txt is never seen half-written. The lock is
 * held throughout, so the file holds exactly the last count printed. */
static int save(const char *dir, void *user) {
    (void)user;
    char tmp[4096], final[4096];
    if (snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, STATE_FILE) >= (int)sizeof tmp ||
        snprintf(final, sizeof final, "%s/%s", dir, STATE_FILE) >= (int)sizeof final) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int rc = -1;
    pthread_mutex_lock(&lock);
    FILE *f = fopen(tmp, "w");
    if (f) {
        int wrote = fprintf(f, "%ld\n", count) > 0;
        /* fclose reports write errors buffered until now. */
        if (fclose(f) == 0 && wrote && rename(tmp, final) == 0) rc = 0;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int main(void) {
    const char *dir = ferry_restore_dir();
    if (dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, STATE_FILE);
        FILE *f = fopen(path, "r");
        /* No fallback to 0: a failed restore must not silently lose the migrated state. */
        if (!f || fscanf(f, "%ld", &count) != 1) {
            fprintf(stderr, "counter: cannot restore from %s: %s\n", path,
                    f ? "no number in file" : strerror(errno));
            return 1;
        }
        fclose(f);
        printf("restored count=%ld\n", count);
        fflush(stdout);
    }

    /* Only after the state is loaded: ferry_serve() says hello, telling the agent we are ready. */
    if (ferry_serve(save, NULL) != 0)
        fprintf(stderr, "counter: cannot start the ferry_coop helper: %s\n", strerror(errno));

    const struct timespec tick = {0, 100 * 1000 * 1000};
    for (;;) {
        nanosleep(&tick, NULL); /* an early wake-up by a signal only shortens one tick */
        pthread_mutex_lock(&lock);
        count++;
        printf("count %ld\n", count);
        fflush(stdout);
        pthread_mutex_unlock(&lock);
    }
}
