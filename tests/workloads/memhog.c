/*
 * memhog SIZE_MIB [write] — a migration workload whose memory can be checked byte by byte.
 *
 * Maps SIZE_MIB MiB with one anonymous mmap and fills it in 4096-byte pages whose content is a
 * pure function of the page index i (so it can be regenerated for checking):
 *   i % 3 == 0  pseudo-random bytes from xorshift64 seeded from i
 *   i % 3 == 1  zeros, written explicitly (so the page is resident, not the shared zero page)
 *   i % 3 == 2  the line "ferry page %08zu text\n" (with i) repeated, cut off at the page end
 * Without `write` the region is never written again. With `write` the program keeps rewriting it:
 * about 64 000 times a second it picks a page (pseudo-randomly, over the whole region), adds 1 to
 * that page's generation (an array outside the region) and stores the generation in the page's
 * first 8 bytes; the expected content of a page with generation g > 0 is its generated content
 * with the first 8 bytes replaced by g. Before each rewrite it asks mincore(2) whether the page
 * is in memory, and counts the rewrites of pages that were not (after a post-copy restore: pages
 * that had not arrived yet, written as they arrive). A separate counter ticks every 100 ms.
 * A second mapping of GUARDED pages holds the pages that follow (i = P, P + 1, ...) and is kept
 * PROT_NONE: the program itself cannot read it, and a migration must still move it intact.
 * On SIGUSR1 every byte of both is compared with the regenerated content (the guarded mapping
 * made readable for the check only).
 *
 * Output, one line each, flushed:
 *   memhog ready size_mib=S pages=P
 *   tick N                                   (N = 1, 2, ...)
 *   verify ok pages=P guarded=G tick=N writes=W missing=M
 *                                            (W = page rewrites so far, M = those of pages that were
 *                                             not in memory; both 0 without `write`)
 *   verify FAIL page=P offset=O tick=N       (first bad byte; O is the offset within page P)
 *
 * Sleeps are relative nanosleeps only (no absolute CLOCK_MONOTONIC deadlines), so a restore on
 * a host whose monotonic clock is behind does not stall.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror -o memhog memhog.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096 /* the content unit; fixed so content does not depend on the host */
#define GUARDED 256 /* pages of the PROT_NONE mapping */

static volatile sig_atomic_t verify_requested;
static unsigned long ticks; /* the counter; deliberately outside the big region */
static uint32_t *gens; /* `write`: each page's generation (0: never rewritten) */
static unsigned long writes; /* `write`: page rewrites so far */
static unsigned long missing; /* `write`: rewrites of pages mincore said were not in memory */

static void on_usr1(int sig) {
    (void)sig;
    verify_requested = 1;
}

/* printf + flush: stdout is a pipe, and the test reads lines as they come. */
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* Writes the expected content of page i into out[PAGE]. */
static void gen_page(size_t i, unsigned char *out) {
    switch (i % 3) {
    case 0: {
        /* xorshift64; the seed mixes i so neighbouring pages differ, and is never 0. */
        uint64_t s = (uint64_t)i * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
        if (s == 0)
            s = 1;
        for (size_t off = 0; off < PAGE; off += 8) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            memcpy(out + off, &s, 8);
        }
        break;
    }
    case 1:
        memset(out, 0, PAGE);
        break;
    default: {
        char line[64];
        int len = snprintf(line, sizeof line, "ferry page %08zu text\n", i);
        for (size_t off = 0; off < PAGE; off += (size_t)len) {
            size_t n = PAGE - off < (size_t)len ? PAGE - off : (size_t)len;
            memcpy(out + off, line, n);
        }
        break;
    }
    }
}

/* Compares the whole region with regenerated content and reports the first difference. */
static unsigned char *guarded; /* GUARDED pages, PROT_NONE but during a check */

static void verify(const unsigned char *region, size_t pages) {
    static unsigned char want[PAGE];
    if (mprotect(guarded, GUARDED * PAGE, PROT_READ) != 0) {
        say("verify FAIL mprotect: %s", strerror(errno));
        return;
    }
    for (size_t i = 0; i < pages + GUARDED; i++) {
        const unsigned char *got = i < pages ? region + i * PAGE : guarded + (i - pages) * PAGE;
        gen_page(i, want);
        if (i < pages && gens && gens[i]) {
            uint64_t g = gens[i];
            memcpy(want, &g, 8);
        }
        if (memcmp(got, want, PAGE) != 0) {
            size_t off = 0;
            while (got[off] == want[off])
                off++;
            say("verify FAIL page=%zu offset=%zu tick=%lu", i, off, ticks);
            mprotect(guarded, GUARDED * PAGE, PROT_NONE);
            return;
        }
    }
    mprotect(guarded, GUARDED * PAGE, PROT_NONE);
    say("verify ok pages=%zu guarded=%d tick=%lu writes=%lu missing=%lu", pages, GUARDED, ticks,
        writes, missing);
}

int main(int argc, char **argv) {
    char *end;
    unsigned long mib = argc >= 2 ? strtoul(argv[1], &end, 10) : 0;
    int writer = argc == 3 && strcmp(argv[2], "write") == 0;
    if (argc < 2 || argc > 3 || (argc == 3 && !writer) || *end != '\0' || mib == 0 ||
        mib > ((size_t)-1 >> 21)) {
        fprintf(stderr, "usage: memhog SIZE_MIB [write]   (SIZE_MIB > 0)\n");
        return 2;
    }
    size_t size = (size_t)mib << 20;
    size_t pages = size / PAGE;

    /* No SA_RESTART: the handler just sets a flag; nanosleep returns EINTR and we look at it. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0) {
        perror("sigaction");
        return 1;
    }

    unsigned char *region = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t i = 0; i < pages; i++)
        gen_page(i, region + i * PAGE); /* generate straight into place */
    guarded = mmap(NULL, GUARDED * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guarded == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t i = 0; i < GUARDED; i++)
        gen_page(pages + i, guarded + i * PAGE);
    if (mprotect(guarded, GUARDED * PAGE, PROT_NONE) != 0) {
        perror("mprotect");
        return 1;
    }

    if (writer) {
        gens = calloc(pages, sizeof *gens);
        if (!gens) {
            perror("calloc");
            return 1;
        }
    }

    say("memhog ready size_mib=%lu pages=%zu", mib, pages);

    uint64_t pick = 0x9E3779B97F4A7C15ull; /* xorshift64 state for the pages to rewrite */
    for (;;) {
        if (writer) {
            /* ~100 ms: 100 rounds of 64 rewrites and a 1 ms sleep (cut short by a signal). */
            for (int round = 0; round < 100; round++) {
                for (int n = 0; n < 64; n++) {
                    pick ^= pick << 13;
                    pick ^= pick >> 7;
                    pick ^= pick << 17;
                    size_t i = pick % pages;
                    unsigned char in_memory = 1;
                    if (mincore(region + i * PAGE, PAGE, &in_memory) == 0 && !(in_memory & 1))
                        missing++;
                    uint64_t g = ++gens[i];
                    memcpy(region + i * PAGE, &g, 8);
                    writes++;
                }
                struct timespec ms = {0, 1000 * 1000};
                nanosleep(&ms, NULL);
                if (verify_requested) {
                    verify_requested = 0;
                    verify(region, pages);
                }
            }
            ticks++;
            say("tick %lu", ticks);
            continue;
        }
        /* Sleep 100 ms; on EINTR continue with the remaining time (req doubles as rem). */
        struct timespec req = {0, 100 * 1000 * 1000};
        while (nanosleep(&req, &req) != 0 && errno == EINTR) {
            if (verify_requested) {
                verify_requested = 0;
                verify(region, pages);
            }
        }
        if (verify_requested) {
            verify_requested = 0;
            verify(region, pages);
        }
        ticks++;
        say("tick %lu", ticks);
    }
}
