/*
 * ferry_coop.h - header-only helper for ferry's *cooperative* checkpoint protocol.
 *
 * A program that wants to be migrated without CRIU saves its own state when the ferry agent
 * asks. This header talks to the agent; the program supplies a callback that writes its state
 * files into a directory. C99 + pthreads; build with -pthread.
 *
 * Protocol (one UTF-8 JSON object per '\n'-terminated line):
 *  - The agent starts the program with FERRY_CONTROL=<path>, a UNIX stream socket the agent
 *    listens on. ferry_serve() connects to it from a detached background thread.
 *  - On a migration target the program also gets FERRY_RESTORE=<dir> (ferry_restore_dir()), the
 *    files saved on the source. Load them BEFORE calling ferry_serve().
 *  - On connecting the helper sends {"op":"hello","pid":<getpid()>,"restored":<true|false>}.
 *  - The agent may then send {"op":"checkpoint","dir":"<absolute dir>"} any number of times.
 *    The helper calls save(dir, user) (dir exists and is empty) and answers {"ok":true}, or
 *    {"ok":false,"error":"<message>"} if save returned non-zero. After ok the agent SIGSTOPs
 *    the program and later kills it, or SIGCONTs it if the migration rolled back (the program
 *    simply continues).
 *  - Unknown ops get {"ok":false,"error":"unknown op <op>"}; malformed lines get the same shape
 *    with a description. The connection stays up.
 *  - Without FERRY_CONTROL nothing happens. If connecting fails, one line goes to stderr and the
 *    program carries on without cooperative checkpointing.
 *
 * save runs on the helper thread: protect the state with a mutex so the snapshot is consistent.
 * It returns 0 on success; on failure non-zero, ideally with errno set (the error reply then
 * carries strerror(errno)).
 *
 * With -std=c99 (strict), define _POSIX_C_SOURCE=200809L before including any header.
 */
#ifndef FERRY_COOP_H
#define FERRY_COOP_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

/* Everything is static inline: header-only, and no unused-function warnings. Names starting
 * with ferry__ are internal. */

/* The directory to load saved state from on a migration target, else NULL. */
static inline const char *ferry_restore_dir(void) {
    const char *dir = getenv("FERRY_RESTORE");
    return (dir && *dir) ? dir : NULL;
}

struct ferry__ctx {
    char *control;
    int restored;
    int (*save)(const char *dir, void *user);
    void *user;
};

/* Writes all of buf. MSG_NOSIGNAL: a vanished agent must give EPIPE, not kill the program. */
static inline int ferry__send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Sends {"ok":false,"error":"<the NULL-terminated string arguments, concatenated>"}. */
static inline int ferry__send_error(int fd, ...) {
    static const char head[] = "{\"ok\":false,\"error\":\"", tail[] = "\"}\n";
    va_list ap;
    size_t total = 0;
    const char *s;
    va_start(ap, fd);
    while ((s = va_arg(ap, const char *)) != NULL) total += strlen(s);
    va_end(ap);
    /* Worst case every byte becomes a 6-byte \u00XX escape. */
    char *out = malloc(sizeof head + 6 * total + sizeof tail);
    if (!out) return -1;
    char *o = out;
    memcpy(o, head, sizeof head - 1);
    o += sizeof head - 1;
    va_start(ap, fd);
    while ((s = va_arg(ap, const char *)) != NULL) {
        for (; *s; s++) {
            unsigned char c = (unsigned char)*s;
            if (c == '"' || c == '\\') {
                *o++ = '\\';
                *o++ = (char)c;
            } else if (c == '\n') {
                *o++ = '\\';
                *o++ = 'n';
            } else if (c < 0x20) {
                /* Control characters would break the line framing or be invalid JSON. */
                o += sprintf(o, "\\u%04x", c);
            } else {
                *o++ = (char)c;
            }
        }
    }
    va_end(ap);
    memcpy(o, tail, sizeof tail - 1);
    o += sizeof tail - 1;
    int rc = ferry__send_all(fd, out, (size_t)(o - out));
    free(out);
    return rc;
}

/* --- Minimal JSON: one object per line; only top-level "op" and "dir" strings are kept. --- */

struct ferry__json {
    const char *p, *end;
    const char *err; /* static description of the first error */
};

static inline void ferry__ws(struct ferry__json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n'))
        j->p++;
}

static inline int ferry__fail(struct ferry__json *j, const char *err) {
    j->err = err;
    return -1;
}

static inline int ferry__hex4(struct ferry__json *j, unsigned *out) {
    unsigned v = 0;
    if (j->end - j->p < 4) return ferry__fail(j, "expected 4 hex digits in \\u escape");
    for (int i = 0; i < 4; i++) {
        char c = *j->p++;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return ferry__fail(j, "expected 4 hex digits in \\u escape");
    }
    *out = v;
    return 0;
}

/* Parses a string at j->p. With out, stores a malloc'd, decoded copy (the caller frees it). */
static inline int ferry__string(struct ferry__json *j, char **out) {
    if (j->p >= j->end || *j->p != '"') return ferry__fail(j, "expected a string");
    j->p++;
    /* Decoding never makes a string longer than its encoding. */
    char *buf = out ? malloc((size_t)(j->end - j->p) + 1) : NULL;
    if (out && !buf) return ferry__fail(j, "out of memory");
    char *o = buf;
    for (;;) {
        if (j->p >= j->end) {
            free(buf);
            return ferry__fail(j, "unterminated string");
        }
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"') break;
        if (c < 0x20) {
            j->p--;
            free(buf);
            return ferry__fail(j, "control character in string");
        }
        if (c != '\\') {
            if (o) *o++ = (char)c;
            continue;
        }
        if (j->p >= j->end) {
            free(buf);
            return ferry__fail(j, "unterminated string");
        }
        char e = *j->p++;
        char plain = e == '"' ? '"' : e == '\\' ? '\\' : e == '/' ? '/' : e == 'b' ? '\b'
                   : e == 'f' ? '\f' : e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : 0;
        if (plain) {
            if (o) *o++ = plain;
            continue;
        }
        if (e != 'u') {
            j->p--;
            free(buf);
            return ferry__fail(j, "invalid escape");
        }
        unsigned cp, lo;
        if (ferry__hex4(j, &cp) != 0) {
            free(buf);
            return -1;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* high surrogate: a low one must follow */
            if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') {
                free(buf);
                return ferry__fail(j, "unpaired surrogate in \\u escape");
            }
            j->p += 2;
            if (ferry__hex4(j, &lo) != 0) {
                free(buf);
                return -1;
            }
            if (lo < 0xDC00 || lo > 0xDFFF) {
                free(buf);
                return ferry__fail(j, "unpaired surrogate in \\u escape");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            free(buf);
            return ferry__fail(j, "unpaired surrogate in \\u escape");
        } else if (cp == 0) {
            /* Would silently truncate a C string (and no path can contain NUL). */
            free(buf);
            return ferry__fail(j, "\\u0000 is not supported");
        }
        if (!o) continue;
        /* UTF-8 encode; at most 4 bytes, never more than the 6+ bytes of the escape. */
        if (cp < 0x80) {
            *o++ = (char)cp;
        } else if (cp < 0x800) {
            *o++ = (char)(0xC0 | (cp >> 6));
            *o++ = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            *o++ = (char)(0xE0 | (cp >> 12));
            *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
            *o++ = (char)(0x80 | (cp & 0x3F));
        } else {
            *o++ = (char)(0xF0 | (cp >> 18));
            *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
            *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
            *o++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    if (out) {
        *o = '\0';
        *out = buf;
    }
    return 0;
}

static inline int ferry__value(struct ferry__json *j, int depth);

/* Parses an object; at the top level (op/dir non-NULL) keeps the last "op"/"dir" strings. */
static inline int ferry__object(struct ferry__json *j, int depth, char **op, char **dir) {
    if (depth >= 32) return ferry__fail(j, "nested too deeply"); /* bounds the recursion */
    if (j->p >= j->end || *j->p != '{') return ferry__fail(j, "expected a JSON object");
    j->p++;
    ferry__ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return 0;
    }
    for (;;) {
        char *key = NULL;
        ferry__ws(j);
        if (ferry__string(j, op ? &key : NULL) != 0) return -1;
        ferry__ws(j);
        if (j->p >= j->end || *j->p != ':') {
            free(key);
            return ferry__fail(j, "expected ':'");
        }
        j->p++;
        ferry__ws(j);
        char **slot = !key ? NULL : !strcmp(key, "op") ? op : !strcmp(key, "dir") ? dir : NULL;
        free(key);
        if (slot && j->p < j->end && *j->p == '"') {
            free(*slot);
            *slot = NULL;
            if (ferry__string(j, slot) != 0) return -1;
        } else {
            if (slot) { /* a later non-string value replaces an earlier string, as in JSON libs */
                free(*slot);
                *slot = NULL;
            }
            if (ferry__value(j, depth) != 0) return -1;
        }
        ferry__ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
        } else if (j->p < j->end && *j->p == '}') {
            j->p++;
            return 0;
        } else {
            return ferry__fail(j, "expected ',' or '}'");
        }
    }
}

static inline int ferry__digits(struct ferry__json *j) {
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return ferry__fail(j, "expected a digit");
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    return 0;
}

/* Validates and skips any value that is not kept. */
static inline int ferry__value(struct ferry__json *j, int depth) {
    if (j->p >= j->end) return ferry__fail(j, "expected a value");
    char c = *j->p;
    if (c == '"') return ferry__string(j, NULL);
    if (c == '{') return ferry__object(j, depth + 1, NULL, NULL);
    if (c == '[') {
        if (depth + 1 >= 32) return ferry__fail(j, "nested too deeply");
        j->p++;
        ferry__ws(j);
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            return 0;
        }
        for (;;) {
            ferry__ws(j);
            if (ferry__value(j, depth + 1) != 0) return -1;
            ferry__ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
            } else if (j->p < j->end && *j->p == ']') {
                j->p++;
                return 0;
            } else {
                return ferry__fail(j, "expected ',' or ']'");
            }
        }
    }
    static const char *const words[] = {"true", "false", "null"};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if (c == words[i][0]) {
            if ((size_t)(j->end - j->p) < n || memcmp(j->p, words[i], n) != 0)
                return ferry__fail(j, "invalid literal");
            j->p += n;
            return 0;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        if (c == '-') j->p++;
        if (j->p < j->end && *j->p == '0') j->p++;
        else if (ferry__digits(j) != 0) return -1;
        if (j->p < j->end && *j->p == '.') {
            j->p++;
            if (ferry__digits(j) != 0) return -1;
        }
        if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
            j->p++;
            if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
            if (ferry__digits(j) != 0) return -1;
        }
        return 0;
    }
    return ferry__fail(j, "expected a value");
}

/* Answers one request line (without its '\n'). Returns -1 only if the reply cannot be sent. */
static inline int ferry__handle(struct ferry__ctx *c, int fd, const char *line, size_t len) {
    struct ferry__json j = {line, line + len, NULL};
    char *op = NULL, *dir = NULL;
    int rc;
    ferry__ws(&j);
    int parsed = ferry__object(&j, 0, &op, &dir);
    if (parsed == 0) {
        ferry__ws(&j);
        if (j.p != j.end) parsed = ferry__fail(&j, "trailing data after the object");
    }
    if (parsed != 0) {
        char at[32];
        snprintf(at, sizeof at, " at byte %ld", (long)(j.p - line));
        rc = ferry__send_error(fd, "malformed line: ", j.err, at, (char *)NULL);
    } else if (!op) {
        rc = ferry__send_error(fd, "malformed line: missing \"op\" string field", (char *)NULL);
    } else if (strcmp(op, "checkpoint") != 0) {
        rc = ferry__send_error(fd, "unknown op ", op, (char *)NULL);
    } else if (!dir) {
        rc = ferry__send_error(fd, "checkpoint needs a \"dir\" string field", (char *)NULL);
    } else if (dir[0] != '/') {
        /* A relative path would resolve against our cwd, which means nothing to the agent. */
        rc = ferry__send_error(fd, "checkpoint dir must be an absolute path, got ", dir,
                               (char *)NULL);
    } else {
        errno = 0;
        int r = c->save(dir, c->user);
        if (r == 0) {
            rc = ferry__send_all(fd, "{\"ok\":true}\n", 12);
        } else {
            char why[64];
            if (errno != 0) snprintf(why, sizeof why, "%s", strerror(errno));
            else snprintf(why, sizeof why, "save callback returned %d", r);
            rc = ferry__send_error(fd, "save into ", dir, " failed: ", why, (char *)NULL);
        }
    }
    free(op);
    free(dir);
    return rc;
}

static inline int ferry__connect(const char *path) {
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    /* Close-on-exec: a child holding the socket would hide our exit from the agent. */
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* Sends hello, then answers request lines until the agent hangs up (0) or I/O fails (-1). */
static inline int ferry__session(struct ferry__ctx *c, int fd) {
    char hello[96];
    int n = snprintf(hello, sizeof hello, "{\"op\":\"hello\",\"pid\":%ld,\"restored\":%s}\n",
                     (long)getpid(), c->restored ? "true" : "false");
    if (ferry__send_all(fd, hello, (size_t)n) != 0) return -1;

    char *buf = NULL; /* bytes received but not yet answered: at most one partial line */
    size_t len = 0, cap = 0;
    int rc = -1;
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? 2 * cap : 4096;
            char *nbuf = realloc(buf, ncap);
            if (!nbuf) goto out;
            buf = nbuf;
            cap = ncap;
        }
        ssize_t r = recv(fd, buf + len, cap - len, 0);
        if (r < 0 && errno == EINTR) continue; /* e.g. SIGSTOP/SIGCONT around a rollback */
        if (r < 0) goto out;
        if (r == 0) { /* agent closed; answer a last unterminated line, like the other helpers */
            if (len > 0) ferry__handle(c, fd, buf, len);
            rc = 0;
            goto out;
        }
        len += (size_t)r;
        char *start = buf, *nl;
        while ((nl = memchr(start, '\n', (size_t)(buf + len - start))) != NULL) {
            if (ferry__handle(c, fd, start, (size_t)(nl - start)) != 0) goto out;
            start = nl + 1;
        }
        len = (size_t)(buf + len - start);
        memmove(buf, start, len);
    }
out:;
    int saved = errno; /* keep the cause for the caller's message */
    free(buf);
    errno = saved;
    return rc;
}

static inline void *ferry__thread(void *arg) {
    struct ferry__ctx *c = arg;
    int fd = ferry__connect(c->control);
    if (fd < 0) {
        fprintf(stderr,
                "ferry_coop: cannot connect to FERRY_CONTROL=%s: %s; running without "
                "cooperative checkpointing\n",
                c->control, strerror(errno));
    } else {
        if (ferry__session(c, fd) != 0)
            fprintf(stderr, "ferry_coop: control connection %s failed: %s; no further checkpoints\n",
                    c->control, strerror(errno));
        close(fd);
    }
    free(c->control);
    free(c);
    return NULL;
}

/*
 * Starts answering the agent's checkpoint requests with save(dir, user) in a detached thread.
 * Call once, after any state from ferry_restore_dir() was loaded: the hello it sends tells the
 * agent the program is ready. Returns 0 when started or when FERRY_CONTROL is unset; -1 with
 * errno set if the thread cannot be started (connection problems are only reported on stderr).
 */
static inline int ferry_serve(int (*save)(const char *dir, void *user), void *user) {
    const char *control = getenv("FERRY_CONTROL");
    if (!control || !*control) return 0;
    if (!save) {
        errno = EINVAL;
        return -1;
    }
    struct ferry__ctx *c = malloc(sizeof *c);
    size_t n = strlen(control) + 1;
    char *copy = malloc(n);
    if (!c || !copy) {
        free(c);
        free(copy);
        errno = ENOMEM;
        return -1;
    }
    memcpy(copy, control, n);
    c->control = copy;
    c->restored = ferry_restore_dir() != NULL;
    c->save = save;
    c->user = user;

    pthread_attr_t attr;
    pthread_t tid;
    int rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&tid, &attr, ferry__thread, c);
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        free(c->control);
        free(c);
        errno = rc;
        return -1;
    }
    return 0;
}

#endif /* FERRY_COOP_H */
