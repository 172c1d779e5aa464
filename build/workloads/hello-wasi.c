/* hello-wasi — hello.c's HTTP/1.1 server as a WASI (preview 1) module: same answers, same body.
 *   wasmtime run --tcplisten 127.0.0.1:PORT hello-wasi.wasm [--body TEXT]
 *   wazero run -listen 127.0.0.1:PORT hello-wasi.wasm [--body TEXT]
 *   wasmedge hello-wasmedge.wasm --port PORT [--bind 127.0.0.1] [--body TEXT]   (built with -DWASMEDGE)
 * WASI preview 1 cannot create sockets: the runtime opens the listener and hands it to the module as a
 * pre-opened descriptor (the first socket from fd 3 on), and the module accepts on it (sock_accept).
 * WasmEdge has no such option; its own socket extension (sock_open_v2 / sock_bind_v2 / sock_listen_v2 /
 * sock_accept_v2, imported from "wasi_snapshot_preview1") lets the module open the listener itself: that
 * variant is hello-wasmedge.wasm, built from this file with -DWASMEDGE (the imports would make the
 * standard module fail to instantiate elsewhere).
 * Every request gets 200, Content-Type text/plain, Content-Length, TEXT (default "hello\n"); HEAD gets
 * the headers only; keep-alive and pipelining per connection; `Connection: close` honoured; a poll loop
 * (poll_oneoff) over up to MAXC connections. No signal handling: WASI has none; the runtime process
 * ends on SIGTERM. Build: clang --target=wasm32-wasi --sysroot=/usr -O2 -s (see build-wasm.sh). */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <wasi/api.h>

#define MAXC 64
#define BUFSZ 8192
#define IDLE_US 100
#define IDLE_US_S "100"
static struct pollfd pf[MAXC + 1]; /* pf[0] is the listening socket */
static char buf[MAXC + 1][BUFSZ];
static size_t len[MAXC + 1], skip[MAXC + 1]; /* bytes buffered; request body bytes still to drop */
static char *resp[2]; static size_t resp_len[2], head_len[2]; /* [0] keep-alive, [1] close */

static void usage(void) {
#ifdef WASMEDGE
  fputs("usage: hello-wasmedge.wasm --port N [--bind IPV4] [--body TEXT]\n", stderr);
#else
  fputs("usage: hello-wasi.wasm [--body TEXT]  (the runtime pre-opens the listening socket)\n", stderr);
#endif
  exit(2);
}
static void drop(int i) { close(pf[i].fd); pf[i].fd = -1; len[i] = skip[i] = 0; }
static int send_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, 0);
    if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (w <= 0) return -1;
    p += w; n -= (size_t)w;
  }
  return 0;
}
/* Value of header NAME in the request head (NUL-terminated), or NULL. */
static const char *header(const char *head, const char *name) {
  size_t n = strlen(name);
  for (const char *l = strstr(head, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n"))
    if (!strncasecmp(l + 2, name, n) && l[2 + n] == ':') { l += 3 + n; while (*l == ' ' || *l == '\t') l++; return l; }
  return NULL;
}
/* Answer every complete request in buf[i]; returns -1 when the connection must close. */
static int serve(int i) {
  for (;;) {
    if (skip[i]) { size_t k = skip[i] < len[i] ? skip[i] : len[i];
                   memmove(buf[i], buf[i] + k, len[i] - k); len[i] -= k; skip[i] -= k; if (skip[i]) return 0; }
    buf[i][len[i]] = 0;
    char *end = strstr(buf[i], "\r\n\r\n");
    if (!end) return len[i] >= BUFSZ - 1 ? -1 : 0; /* incomplete (or oversized) head */
    end[2] = 0;
    const char *c = header(buf[i], "Connection"), *cl = header(buf[i], "Content-Length");
    char *sp = strchr(buf[i], ' '), *eol = strstr(buf[i], "\r\n");
    int http10 = eol - buf[i] >= 8 && !strncmp(eol - 8, "HTTP/1.0", 8);
    int close_ = c ? !strncasecmp(c, "close", 5) || (http10 && strncasecmp(c, "keep-alive", 10)) : http10;
    int head_only = sp && sp - buf[i] == 4 && !strncmp(buf[i], "HEAD", 4);
    size_t used = (size_t)(end + 4 - buf[i]);
    skip[i] = cl ? strtoul(cl, NULL, 10) : 0;
    memmove(buf[i], buf[i] + used, len[i] - used); len[i] -= used;
    if (send_all(pf[i].fd, resp[close_], head_only ? head_len[close_] : resp_len[close_]) || close_) return -1;
  }
}

#ifdef WASMEDGE
/* WasmEdge's socket extension (v2 calls, as its wasmedge_wasi_socket library uses them). */
typedef struct { uint8_t *buf; uint32_t buf_len; } we_address;
#define WE_IMPORT(name) __attribute__((import_module("wasi_snapshot_preview1"), import_name(name)))
WE_IMPORT("sock_open_v2") uint32_t we_sock_open(uint32_t family, uint32_t type, uint32_t *fd);
WE_IMPORT("sock_bind_v2") uint32_t we_sock_bind(uint32_t fd, we_address *addr, uint32_t port);
WE_IMPORT("sock_listen_v2") uint32_t we_sock_listen(uint32_t fd, uint32_t backlog);
WE_IMPORT("sock_accept_v2") uint32_t we_sock_accept(uint32_t fd, uint32_t flags, uint32_t *newfd);
WE_IMPORT("sock_setsockopt") uint32_t we_setsockopt(uint32_t fd, uint32_t level, uint32_t name, int32_t *v,
                                                    uint32_t size);
static int parse_ipv4(const char *s, uint8_t out[4]) {
  for (int k = 0; k < 4; k++) {
    char *end; long v = strtol(s, &end, 10);
    if (end == s || v < 0 || v > 255 || (k < 3 ? *end != '.' : *end != 0)) return -1;
    out[k] = (uint8_t)v; s = end + 1;
  }
  return 0;
}
static int open_listener(long port, const char *bind_addr) {
  uint8_t ip[4]; uint32_t fd; int32_t one = 1;
  if (parse_ipv4(bind_addr, ip)) { fprintf(stderr, "hello-wasmedge: bad --bind address %s\n", bind_addr); exit(2); }
  we_address a = {ip, 4};
  uint32_t e = we_sock_open(1 /* inet4 */, 2 /* stream */, &fd);
  if (!e) we_setsockopt(fd, 0 /* SOL_SOCKET */, 2 /* SO_REUSEADDR */, &one, sizeof one);
  if (!e) e = we_sock_bind(fd, &a, (uint32_t)port);
  if (!e) e = we_sock_listen(fd, 1024);
  if (e) { fprintf(stderr, "hello-wasmedge: listen on %s:%ld: WASI errno %u\n", bind_addr, port, e); exit(1); }
  return (int)fd;
}
static int accept_one(int ls) {
  uint32_t fd;
  uint32_t e = we_sock_accept((uint32_t)ls, __WASI_FDFLAGS_NONBLOCK, &fd);
  if (e) { errno = (int)e; return -1; }
  return (int)fd;
}
#else
/* The first socket the runtime pre-opened (wasmtime --tcplisten, wazero -listen): fd 3 in practice. */
static int find_listener(void) {
  for (int fd = 3; fd < 64; fd++) {
    __wasi_fdstat_t st;
    if (__wasi_fd_fdstat_get((__wasi_fd_t)fd, &st) == __WASI_ERRNO_BADF) break;
    if (st.fs_filetype == __WASI_FILETYPE_SOCKET_STREAM) return fd;
  }
  return -1;
}
static int accept_one(int ls) {
  __wasi_fd_t fd;
  __wasi_errno_t e = __wasi_sock_accept((__wasi_fd_t)ls, __WASI_FDFLAGS_NONBLOCK, &fd);
  if (e) { errno = e; return -1; }
  return (int)fd;
}
#endif

int main(int argc, char **argv) {
  const char *body = "hello\n";
#ifdef WASMEDGE
  long port = -1; const char *bind_addr = "0.0.0.0";
#endif
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 >= argc) usage();
    if (!strcmp(argv[i], "--body")) body = argv[i + 1];
#ifdef WASMEDGE
    else if (!strcmp(argv[i], "--port")) { char *end; port = strtol(argv[i + 1], &end, 10);
                                           if (*end || end == argv[i + 1] || port < 0 || port > 65535) usage(); }
    else if (!strcmp(argv[i], "--bind")) bind_addr = argv[i + 1];
#endif
    else usage();
  }
  for (int k = 0; k < 2; k++) {
    const char *conn = k ? "close" : "keep-alive";
    size_t cap = strlen(body) + 128; resp[k] = malloc(cap);
    int h = snprintf(resp[k], cap, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: %s\r\n\r\n", strlen(body), conn);
    head_len[k] = (size_t)h; resp_len[k] = (size_t)h + strlen(body); memcpy(resp[k] + h, body, strlen(body));
  }
#ifdef WASMEDGE
  if (port < 0) usage();
  int ls = open_listener(port, bind_addr);
#else
  int ls = find_listener();
  if (ls < 0) { fputs("hello-wasi: no pre-opened listening socket (wasmtime run -S preview2=n,tcplisten=ADDR, "
                      "wazero run -listen ADDR)\n", stderr); return 2; }
#endif
  (void)__wasi_fd_fdstat_set_flags((__wasi_fd_t)ls, __WASI_FDFLAGS_NONBLOCK);
  for (int i = 1; i <= MAXC; i++) pf[i].fd = -1;
  pf[0].fd = ls; pf[0].events = POLLIN;
  int n = 1; /* pf[0..n) in use */
  /* A runtime whose poll_oneoff does not wait for sockets (wazero: only stdin and clocks; it reports every
   * other descriptor as ready at once) says "readable" for an idle listener: then every pass tries each
   * descriptor without blocking and, when none had anything, sleeps IDLE_US (added latency <= IDLE_US). */
  /* Probes may already be queued (the runtime listened before the module started): accept them until a
   * correct poll says "not ready"; "ready" with nothing to accept is the tell. */
  int sleepy = 0;
  while (!sleepy && n <= MAXC && poll(pf, 1, 0) == 1) {
    int fd = accept_one(ls);
    if (fd >= 0) { pf[n].fd = fd; pf[n].events = POLLIN; pf[n].revents = 0; n++; }
    else if (errno == EAGAIN) { sleepy = 1; fputs("hello-wasi: poll_oneoff does not wait for sockets here: "
                                                  "trying every " IDLE_US_S " us when idle\n", stderr); }
    else break;
  }
  for (;;) {
    int busy = 0;
    if (!sleepy && poll(pf, (nfds_t)n, -1) < 0) { if (errno == EINTR) continue; perror("hello-wasi: poll"); return 1; }
    for (int i = 1; i < n; i++) {
      if (pf[i].fd < 0 || (!sleepy && !pf[i].revents)) continue;
      ssize_t r = recv(pf[i].fd, buf[i] + len[i], BUFSZ - 1 - len[i], 0);
      if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      busy = 1;
      if (r <= 0) { drop(i); continue; }
      len[i] += (size_t)r;
      if (serve(i) < 0) drop(i);
    }
    while (n > 1 && pf[n - 1].fd < 0) n--;
    if (sleepy || pf[0].revents) for (;;) {
      int fd = accept_one(ls), i = 1;
      if (fd < 0) break; /* EAGAIN: backlog drained */
      busy = 1;
      while (i <= MAXC && pf[i].fd >= 0) i++;
      if (i > MAXC) { close(fd); break; }
      pf[i].fd = fd; pf[i].events = POLLIN; pf[i].revents = 0;
      if (i >= n) n = i + 1;
    }
    if (sleepy && !busy) { struct timespec ts = {0, IDLE_US * 1000L}; nanosleep(&ts, NULL); }
  }
}
