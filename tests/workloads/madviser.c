/*
 * madviser — a migration workload that keeps changing one mapping's flags, to show a migration
 * restores the flags the mapping had when the workload was frozen, not earlier ones.
 *
 * Maps 1 MiB and, in a loop, sets MADV_DONTFORK on it (iterations with odd i) or MADV_DOFORK
 * (even i), then reads /proc/self/smaps and checks that the mapping's VmFlags have "dc" exactly
 * when it was just set (reading it again before calling a mismatch a failure). A freeze may fall anywhere in the loop; after a restore, the madvise the
 * program last made must still be in force.
 *
 * Output, one line each, flushed:
 *   madviser ready
 *   flags iter=N fails=F                     (every 500 iterations; F = failed checks so far)
 *   flags FAIL iter=N want_dc=W have_dc=H    (a check failed; the program goes on)
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -o madviser madviser.c
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define SIZE (1 << 20)

/* 1 if the VmFlags of the mapping holding `addr` have "dc", 0 if not, -1 if not found. (With
 * DOFORK the mapping may merge with a neighbour, so it is found by an address inside it.) */
static int has_dc(unsigned long addr) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0, found = -1;
    if (!f) {
        perror("/proc/self/smaps");
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2) {
            in = a <= addr && addr < b;
            continue;
        }
        if (in && !strncmp(line, "VmFlags:", 8)) {
            found = strstr(line, " dc") != NULL;
            break;
        }
    }
    fclose(f);
    return found;
}

int main(void) {
    char *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(m, 1, SIZE);
    printf("madviser ready\n");
    fflush(stdout);
    unsigned long fails = 0;
    for (unsigned long i = 1;; i++) {
        int want = i & 1;
        if (madvise(m, SIZE, want ? MADV_DONTFORK : MADV_DOFORK)) {
            perror("madvise");
            return 1;
        }
        int have = has_dc((unsigned long)m);
        /* A restore may land while stdio holds half of a smaps read: the rest then comes from
         * the restored process's smaps at the old offset. Only a second read counts. */
        if (have != want)
            have = has_dc((unsigned long)m);
        if (have != want) {
            fails++;
            printf("flags FAIL iter=%lu want_dc=%d have_dc=%d\n", i, want, have);
            fflush(stdout);
        }
        if (i % 500 == 0) {
            printf("flags iter=%lu fails=%lu\n", i, fails);
            fflush(stdout);
        }
    }
}
