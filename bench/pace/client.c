/*
 * The model-pace benchmark's load client: N slots, each running its answers one after another
 * (the next as soon as the previous ends), every stream read to its terminal event, for about a
 * microsecond of CPU per event. Slot i starts at i/N of a spread: N answers at once when the
 * spread is short (a burst), a steady N open at any moment when it is one answer's duration and
 * each slot runs answers until a stop time (a closed loop). Built by the harness at run time
 * (gcc -O2) into the run's work directory; bench/pace/client.py is the same client in Python,
 * used when no C compiler is there. See bench/pace/spec.py for the spec, bench/pace/client.py for
 * the output.
 *
 * It parses HTTP/1.1 heads, chunked bodies and SSE frames, but never the JSON of an event: it
 * reads only the `id:` and `event:` lines, and timestamps each read once (CLOCK_MONOTONIC).
 * A "delta" here is any piece streamed at the model's pace: a `delta` event or a `reasoning` one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { S_IDLE, S_CONNECTING, S_SENDING, S_HEAD, S_SIZE, S_EXT, S_DATA, S_DATA_END, S_DONE };
enum { K_NONE, K_START, K_DELTA, K_DONE, K_ERROR, K_CANCELLED, K_OTHER };
enum { E_OK, E_CONNECT, E_READ, E_EOF, E_HTTP, E_BAD, E_TIMEOUT, E_WRITE, E_UNUSED };

#define LINE_KEEP 24
#define HEAD_MAX 8192
#define LAG_STEP_US 100
#define LAG_MIN_US (-1000000LL)
#define LAG_BUCKETS 1210000 /* -1 s .. +120 s in 100 us steps; the ends take the rest */
#define PHASES 3              /* deltas that arrived before the window, in it, after it */
#define SECONDS 600           /* the lag by the second of arrival; the last takes the rest */
#define COARSE 2191           /* < 0; 0 .. 1 s in 1 ms steps; 1 .. 120 s in 100 ms steps */
/* After a wake-up with work, wait this long before the next: the events of many streams are then
 * read in one wake-up (a few microseconds each instead of a wake-up each), and every arrival is
 * timed at most this late. */
#define COALESCE_NS 1000000

typedef struct {
    int fd, state, status, kind, terminal, error, contiguous, line_len;
    long slot;
    const char *req;
    size_t req_len, req_off, head_len;
    long long chunk_left, frame_id, last_id, events, deltas, bytes, window_deltas;
    int64_t start, sent, first_event, first_delta, last_delta, ended;
    char line[LINE_KEEP];
    char *head;
} Conn;

static uint32_t lags[PHASES][LAG_BUCKETS];
static uint32_t by_second[SECONDS][COARSE];
static int64_t t0_ns, window_start, window_end; /* window_end < 0: until every answer ends */
static long long delta_us, window_events, window_deltas;
static int epfd, open_count;
static long *ended_slots, ended_count; /* slots whose answer ended: their next one is due */

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec - t0_ns) / 1000;
}

static void finish(Conn *c, int error, int64_t now) {
    if (c->state == S_DONE) return;
    c->error = error;
    c->ended = now;
    c->state = S_DONE;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    free(c->head);
    c->head = NULL;
    open_count--;
    ended_slots[ended_count++] = c->slot;
}

static int phase(int64_t now) {
    if (now < window_start) return 0;
    return window_end < 0 || now < window_end ? 1 : 2;
}

/* The coarse buckets of the lag by second: their lower edges are printed, in microseconds. */
static long coarse(int64_t lag) {
    if (lag < 0) return 0;
    if (lag < 1000000) return 1 + lag / 1000;
    long i = 1001 + (long)((lag - 1000000) / 100000);
    return i < COARSE ? i : COARSE - 1;
}

static long long coarse_edge(long i) {
    if (i == 0) return -1000;
    if (i <= 1000) return (long long)(i - 1) * 1000;
    return 1000000 + (long long)(i - 1001) * 100000;
}

static void record_lag(int64_t lag, int64_t now, int in) {
    long long i = (lag - LAG_MIN_US) / LAG_STEP_US;
    if (i < 0) i = 0;
    if (i >= LAG_BUCKETS) i = LAG_BUCKETS - 1;
    lags[in][i]++;
    int64_t second = now / 1000000;
    by_second[second < SECONDS ? second : SECONDS - 1][coarse(lag)]++;
}

static void frame_end(Conn *c, int64_t now) {
    if (c->frame_id < 0) { c->kind = K_NONE; return; } /* a comment (ping) or the retry: line */
    if (c->events == 0) {
        c->first_event = now;
        if (c->frame_id != 1) c->contiguous = 0;
    } else if (c->frame_id != c->last_id + 1) {
        c->contiguous = 0;
    }
    c->last_id = c->frame_id;
    c->events++;
    int in = phase(now);
    window_events += in == 1;
    if (c->kind == K_DELTA) {
        if (c->deltas == 0) c->first_delta = now;
        else record_lag(now - (c->first_delta + c->deltas * delta_us), now, in);
        c->deltas++;
        c->window_deltas += in == 1;
        window_deltas += in == 1;
        c->last_delta = now;
    } else if (c->kind == K_DONE || c->kind == K_ERROR || c->kind == K_CANCELLED) {
        c->terminal = c->kind;
        finish(c, E_OK, now);
    }
    c->frame_id = -1;
    c->kind = K_NONE;
}

static void line_end(Conn *c, int64_t now) {
    int n = c->line_len;
    char *l = c->line;
    if (n > 0 && l[n - 1] == '\r') n--;
    c->line_len = 0;
    if (n == 0) { frame_end(c, now); return; }
    if (n > 4 && memcmp(l, "id: ", 4) == 0) {
        long long v = 0;
        for (int i = 4; i < n && l[i] >= '0' && l[i] <= '9'; i++) v = v * 10 + (l[i] - '0');
        c->frame_id = v;
    } else if (n > 7 && memcmp(l, "event: ", 7) == 0) {
        const char *e = l + 7;
        int m = n - 7;
        /* a piece of reasoning is a piece of the answer: the model's pace either way */
        if (m == 5 && memcmp(e, "delta", 5) == 0) c->kind = K_DELTA;
        else if (m == 9 && memcmp(e, "reasoning", 9) == 0) c->kind = K_DELTA;
        else if (m == 5 && memcmp(e, "start", 5) == 0) c->kind = K_START;
        else if (m == 4 && memcmp(e, "done", 4) == 0) c->kind = K_DONE;
        else if (m == 5 && memcmp(e, "error", 5) == 0) c->kind = K_ERROR;
        else if (m == 9 && memcmp(e, "cancelled", 9) == 0) c->kind = K_CANCELLED;
        else c->kind = K_OTHER;
    }
}

/* SSE bytes: only the first LINE_KEEP bytes of a line are kept (data lines are skipped). */
static void sse(Conn *c, const char *p, size_t n, int64_t now) {
    const char *end = p + n;
    while (p < end && c->state != S_DONE) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t seg = (size_t)((nl ? nl : end) - p);
        size_t room = LINE_KEEP - (size_t)c->line_len;
        size_t take = seg < room ? seg : room;
        memcpy(c->line + c->line_len, p, take);
        c->line_len += (int)take;
        if (!nl) return;
        line_end(c, now);
        p = nl + 1;
    }
}

static int head_done(Conn *c, int64_t now) {
    char *h = c->head;
    h[c->head_len] = 0;
    if (c->head_len < 12 || memcmp(h, "HTTP/1.", 7) != 0) { finish(c, E_BAD, now); return 0; }
    c->status = atoi(h + 9);
    if (c->status != 200) { finish(c, E_HTTP, now); return 0; }
    if (!strcasestr(h, "\ntransfer-encoding: chunked")) { finish(c, E_BAD, now); return 0; }
    free(c->head);
    c->head = NULL;
    c->state = S_SIZE;
    c->chunk_left = 0;
    return 1;
}

static void body(Conn *c, const char *p, size_t n, int64_t now) {
    const char *end = p + n;
    while (p < end && c->state != S_DONE) {
        char ch = *p;
        switch (c->state) {
        case S_HEAD: {
            c->head[c->head_len++] = ch;
            p++;
            if (c->head_len >= 4 && memcmp(c->head + c->head_len - 4, "\r\n\r\n", 4) == 0) {
                if (!head_done(c, now)) return;
            } else if (c->head_len >= HEAD_MAX - 1) {
                finish(c, E_BAD, now);
                return;
            }
            break;
        }
        case S_SIZE:
            p++;
            if (ch >= '0' && ch <= '9') c->chunk_left = c->chunk_left * 16 + (ch - '0');
            else if (ch >= 'a' && ch <= 'f') c->chunk_left = c->chunk_left * 16 + (ch - 'a' + 10);
            else if (ch >= 'A' && ch <= 'F') c->chunk_left = c->chunk_left * 16 + (ch - 'A' + 10);
            else if (ch == ';') c->state = S_EXT;
            else if (ch == '\n') {
                if (c->chunk_left == 0) { finish(c, E_EOF, now); return; } /* no terminal event */
                c->state = S_DATA;
            }
            break;
        case S_EXT:
            p++;
            if (ch == '\n') {
                if (c->chunk_left == 0) { finish(c, E_EOF, now); return; }
                c->state = S_DATA;
            }
            break;
        case S_DATA: {
            size_t take = (size_t)(end - p);
            if ((long long)take > c->chunk_left) take = (size_t)c->chunk_left;
            c->chunk_left -= (long long)take;
            if (c->chunk_left == 0) c->state = S_DATA_END;
            sse(c, p, take, now);
            p += take;
            break;
        }
        case S_DATA_END:
            p++;
            if (ch == '\n') { c->state = S_SIZE; c->chunk_left = 0; }
            break;
        default:
            return;
        }
    }
}

static void start(Conn *c, struct sockaddr_in *addr, int64_t now) {
    c->start = now;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    open_count++;
    if (c->fd < 0) { finish(c, E_CONNECT, now); return; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)addr, sizeof *addr) < 0 && errno != EINPROGRESS) {
        finish(c, E_CONNECT, now);
        return;
    }
    c->state = S_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) finish(c, E_CONNECT, now);
}

static void writable(Conn *c, int64_t now) {
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { finish(c, E_CONNECT, now); return; }
        c->state = S_SENDING;
        c->sent = now;
    }
    while (c->req_off < c->req_len) {
        ssize_t w = write(c->fd, c->req + c->req_off, c->req_len - c->req_off);
        if (w < 0) {
            if (errno == EAGAIN) return;
            finish(c, E_WRITE, now);
            return;
        }
        c->req_off += (size_t)w;
    }
    c->state = S_HEAD;
    c->head = malloc(HEAD_MAX);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void readable(Conn *c, char *buf, size_t size) {
    for (;;) {
        ssize_t r = read(c->fd, buf, size);
        int64_t now = now_us();
        if (r > 0) {
            c->bytes += r;
            body(c, buf, (size_t)r, now);
            if (c->state == S_DONE || (size_t)r < size) return;
        } else if (r == 0) {
            finish(c, E_EOF, now);
            return;
        } else {
            if (errno != EAGAIN) finish(c, E_READ, now);
            return;
        }
    }
}

/* Slot i starts its first answer at i/slots of the spread: all at once when the spread is 0. */
static int64_t due_us(long i, long slots, int64_t spread_us) {
    return spread_us * i / slots;
}

static char *read_spec(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)n + 1);
    if (fread(data, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(2); }
    data[n] = 0;
    fclose(f);
    *size = (size_t)n;
    return data;
}

/* VmHWM: unlike ru_maxrss, it does not carry the peak of the process that exec'd us. */
static long long cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

static long peak_rss_kib(void) {
    char line[256];
    long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kib = atol(line + 6);
    fclose(f);
    return kib;
}

static void report(Conn *conns, long count) {
    static const char *terminals[] = {"-", "start", "delta", "done", "error", "cancelled", "other"};
    for (long i = 0; i < count; i++) {
        Conn *c = &conns[i];
        printf("A %ld %d %d %s %lld %lld %lld %lld %lld %lld %lld %lld %lld %d %lld\n", i,
               c->status, c->error, terminals[c->terminal], (long long)c->start,
               (long long)c->sent, (long long)c->first_event, (long long)c->first_delta,
               (long long)c->last_delta, (long long)c->ended, c->deltas, c->events, c->bytes,
               c->contiguous, c->window_deltas);
    }
    for (int p = 0; p < PHASES; p++)
        for (long i = 0; i < LAG_BUCKETS; i++)
            if (lags[p][i]) printf("H %d %lld %u\n", p, LAG_MIN_US + i * LAG_STEP_US, lags[p][i]);
    for (long t = 0; t < SECONDS; t++)
        for (long i = 0; i < COARSE; i++)
            if (by_second[t][i]) printf("S %ld %lld %u\n", t, coarse_edge(i), by_second[t][i]);
    printf("W %lld %lld\n", window_events, window_deltas);
    printf("R %lld %ld\n", cpu_us(), peak_rss_kib());
}

static void say(const char *what, int64_t now) {
    printf("%s %lld %lld\n", what, (long long)now, cpu_us());
    fflush(stdout);
}

/* The window's edges, said when crossed: the harness measures CPU and WAL between them. */
static int window_state;

static void window_edges(int64_t now) {
    if (window_state == 0 && now >= window_start) { say("window_start", now); window_state = 1; }
    if (window_state == 1 && window_end >= 0 && now >= window_end) {
        say("window_end", now);
        window_state = 2;
    }
}

/* The next answer of each slot whose answer ended, unless the stop time has passed: then the
 * slot's remaining answers are not used. */
static void next_answers(Conn *conns, long count, long slots, int64_t stop_us,
                         struct sockaddr_in *addr, int64_t now) {
    while (ended_count > 0) {
        long slot = ended_slots[--ended_count];
        long j = slot;
        while (j < count && conns[j].state != S_IDLE) j += slots;
        if (j >= count) continue;
        if (stop_us >= 0 && now >= stop_us) {
            for (; j < count; j += slots) { conns[j].state = S_DONE; conns[j].error = E_UNUSED; }
            continue;
        }
        start(&conns[j], addr, now);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s SPEC\n", argv[0]); return 2; }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    size_t size;
    char *spec = read_spec(argv[1], &size);
    char host[64];
    int port;
    long long spread_us, timeout_ms, stop_us, start_us, end_us;
    long slots, count;
    int used = 0;
    if (sscanf(spec, "%63s %d %lld %lld %lld %ld %lld %lld %lld %ld\n%n", host, &port, &delta_us,
               &spread_us, &timeout_ms, &slots, &stop_us, &start_us, &end_us, &count,
               &used) != 10 || count < 1 || slots < 1 || slots > count) {
        fprintf(stderr, "bad spec header\n");
        return 2;
    }
    window_start = start_us;
    window_end = end_us;
    Conn *conns = calloc((size_t)count, sizeof *conns);
    ended_slots = calloc((size_t)count + 1, sizeof *ended_slots);
    char *p = spec + used;
    for (long i = 0; i < count; i++) {
        char *nl = memchr(p, '\n', size - (size_t)(p - spec));
        if (!nl) { fprintf(stderr, "bad spec record %ld\n", i); return 2; }
        conns[i].req_len = strtoul(p, NULL, 10);
        conns[i].req = nl + 1;
        p = nl + 1 + conns[i].req_len;
        conns[i].slot = i % slots;
        conns[i].fd = -1;
        conns[i].frame_id = -1;
        conns[i].last_id = -1;
        conns[i].contiguous = 1;
        conns[i].first_event = conns[i].first_delta = conns[i].last_delta = -1;
        conns[i].start = conns[i].sent = conns[i].ended = -1;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t0_ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    printf("measure_start %lld\n", cpu_us());
    fflush(stdout);
    static char buf[1 << 16];
    struct epoll_event events[512];
    long next = 0; /* the next slot to start its first answer */
    int64_t deadline = timeout_ms * 1000;
    for (;;) {
        int64_t now = now_us();
        window_edges(now);
        next_answers(conns, count, slots, stop_us, &addr, now);
        while (next < slots && now >= due_us(next, slots, spread_us))
            start(&conns[next++], &addr, now);
        next_answers(conns, count, slots, stop_us, &addr, now); /* those that failed at once */
        if ((next == slots && open_count == 0) || now >= deadline) break;
        int64_t wake = now + 100000;
        if (next < slots && due_us(next, slots, spread_us) < wake)
            wake = due_us(next, slots, spread_us);
        if (window_state == 0 && window_start < wake) wake = window_start;
        if (window_state == 1 && window_end >= 0 && window_end < wake) wake = window_end;
        int wait_ms = wake <= now ? 0 : (int)((wake - now + 999) / 1000);
        int n = epoll_wait(epfd, events, 512, wait_ms);
        for (int i = 0; i < n; i++) {
            Conn *c = events[i].data.ptr;
            if (c->state == S_DONE) continue;
            if (c->state == S_CONNECTING || c->state == S_SENDING) writable(c, now_us());
            else readable(c, buf, sizeof buf);
        }
        if (n > 0) {
            struct timespec pause = {0, COALESCE_NS};
            nanosleep(&pause, NULL);
        }
    }
    int64_t now = now_us();
    for (long i = 0; i < count; i++) {
        if (conns[i].state == S_IDLE) { conns[i].error = E_TIMEOUT; conns[i].state = S_DONE; }
        else finish(&conns[i], E_TIMEOUT, now); /* a no-op for those that ended */
    }
    if (window_state == 0) say("window_start", now);
    if (window_state < 2) say("window_end", now);
    say("measure_end", now);
    getchar(); /* the harness reads our CPU time in /proc before we go */
    report(conns, count);
    return 0;
}
