/* hello — tiny static HTTP/1.1 server used as runlab's cold-start workload.
 *   hello --port N [--delay-ms D] [--body TEXT] [--bind ADDR]
 * Sleeps D ms BEFORE creating the listening socket, then answers every request
 * with 200 + TEXT (default "hello\n"; HEAD gets headers only). Keep-alive and
 * pipelining per connection, `Connection: close` honoured, one process with a
 * poll loop (up to MAXC concurrent connections). SIGTERM/SIGINT exit 0 at once
 * (needed as PID 1 in a container or a VM). Build: gcc -static -O2 -s. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXC 512
#define BUFSZ 8192
static struct pollfd pf[MAXC + 1]; /* pf[0] is the listening socket */
static char buf[MAXC + 1][BUFSZ];
static size_t len[MAXC + 1], skip[MAXC + 1]; /* bytes buffered; request body bytes still to drop */
static char *resp[2]; static size_t resp_len[2], head_len[2]; /* [0] keep-alive, [1] close */

static void on_signal(int s) { (void)s; _exit(0); }
static void usage(void) {
  fputs("usage: hello --port N [--delay-ms D] [--body TEXT] [--bind ADDR]\n", stderr);
  exit(2);
}
static long num(const char *s, long lo, long hi) {
  char *end; errno = 0; long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) usage();
  return v;
}
static void drop(int i) { close(pf[i].fd); pf[i].fd = -1; len[i] = skip[i] = 0; }
static int send_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
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
    end[2] = 0; /* head = request line + headers, each ending in CRLF */
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

int main(int argc, char **argv) {
  long port = -1, delay = 0; const char *body = "hello\n", *addr = "0.0.0.0";
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 >= argc) usage();
    if (!strcmp(argv[i], "--port")) port = num(argv[i + 1], 0, 65535);
    else if (!strcmp(argv[i], "--delay-ms")) delay = num(argv[i + 1], 0, 86400000L);
    else if (!strcmp(argv[i], "--body")) body = argv[i + 1];
    else if (!strcmp(argv[i], "--bind")) addr = argv[i + 1];
    else usage();
  }
  if (port < 0) usage();
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL); sigaction(SIGINT, &sa, NULL); signal(SIGPIPE, SIG_IGN);
  for (int k = 0; k < 2; k++) {
    const char *conn = k ? "close" : "keep-alive";
    size_t cap = strlen(body) + 128; resp[k] = malloc(cap);
    int h = snprintf(resp[k], cap, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: %s\r\n\r\n", strlen(body), conn);
    head_len[k] = (size_t)h; resp_len[k] = (size_t)h + strlen(body); memcpy(resp[k] + h, body, strlen(body));
  }
  if (delay) { struct timespec ts = {delay / 1000, (delay % 1000) * 1000000L};
               while (nanosleep(&ts, &ts) && errno == EINTR) {} }
  struct sockaddr_storage ss = {0}; socklen_t sl; int fam;
  struct sockaddr_in *s4 = (struct sockaddr_in *)&ss; struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, addr, &s4->sin_addr) == 1) { fam = s4->sin_family = AF_INET; s4->sin_port = htons(port); sl = sizeof *s4; }
  else if (inet_pton(AF_INET6, addr, &s6->sin6_addr) == 1) { fam = s6->sin6_family = AF_INET6; s6->sin6_port = htons(port); sl = sizeof *s6; }
  else { fprintf(stderr, "hello: bad --bind address %s\n", addr); return 2; }
  int one = 1, ls = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (ls >= 0) setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ls < 0 || bind(ls, (struct sockaddr *)&ss, sl) || listen(ls, 1024)) { perror("hello: listen"); return 1; }
  for (int i = 1; i <= MAXC; i++) pf[i].fd = -1;
  pf[0].fd = ls; pf[0].events = POLLIN;
  int n = 1; /* pf[0..n) in use */
  for (;;) {
    if (poll(pf, (nfds_t)n, -1) < 0) { if (errno == EINTR) continue; perror("hello: poll"); return 1; }
    for (int i = 1; i < n; i++) {
      if (pf[i].fd < 0 || !pf[i].revents) continue;
      ssize_t r = recv(pf[i].fd, buf[i] + len[i], BUFSZ - 1 - len[i], 0);
      if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (r <= 0) { drop(i); continue; }
      len[i] += (size_t)r;
      if (serve(i) < 0) drop(i);
    }
    while (n > 1 && pf[n - 1].fd < 0) n--;
    if (pf[0].revents & POLLIN) for (;;) {
      int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC), i = 1;
      if (fd < 0) break; /* EAGAIN: backlog drained */
      while (i <= MAXC && pf[i].fd >= 0) i++;
      if (i > MAXC) { close(fd); break; }
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      pf[i].fd = fd; pf[i].events = POLLIN; pf[i].revents = 0;
      if (i >= n) n = i + 1;
    }
  }
}
