/* pingpong — TCP ping-pong peer for runlab's inter-service latency phase.
 *   pingpong server --port N                       echo every message back, one connection at a time
 *   pingpong client --peer HOST:PORT --out FILE [--count N] [--size B] [--warmup W]
 * The client connects (TCP_NODELAY), sends W unrecorded then N recorded B-byte messages, each after the
 * previous echo came back, and writes every round trip in microseconds (CLOCK_MONOTONIC), one per line,
 * to FILE.tmp, renamed to FILE when complete. Both roles accept (and ignore) the other's options, so one
 * command line with {role} serves both. SIGTERM/SIGINT exit 0 at once. Build: gcc -static -O2 -s. */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void on_signal(int s) { (void)s; _exit(0); }
static void usage(void) {
  fputs("usage: pingpong server --port N | client --peer HOST:PORT --out FILE [--count N] [--size B] [--warmup W]\n", stderr);
  exit(2);
}
static int full(int fd, char *p, size_t n, int sending) {
  while (n) {
    ssize_t k = sending ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    p += k; n -= (size_t)k;
  }
  return 0;
}
static double now_us(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int serve(long port) {
  int one = 1, s = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((unsigned short)port), .sin6_addr = in6addr_any};
  int zero = 0;
  if (s < 0) { perror("socket"); return 1; }
  setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) { perror("bind/listen"); return 1; }
  printf("pingpong: listening on %ld\n", port); fflush(stdout);
  static char buf[65536];
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ssize_t k;
    while ((k = recv(c, buf, sizeof buf, 0)) > 0)
      if (full(c, buf, (size_t)k, 1)) break;
    close(c);
  }
}

static int client(const char *peer, const char *out, long count, long size, long warmup) {
  char host[256]; const char *colon = strrchr(peer, ':');
  if (!colon || colon == peer || (size_t)(colon - peer) >= sizeof host) usage();
  memcpy(host, peer, (size_t)(colon - peer)); host[colon - peer] = 0;
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
  int err = getaddrinfo(host, colon + 1, &hints, &res);
  if (err) { fprintf(stderr, "pingpong: %s: %s\n", peer, gai_strerror(err)); return 1; }
  int s = -1;
  for (int tries = 0; tries < 500 && s < 0; tries++) { /* the server may still be binding: retry for ~5 s */
    s = socket(res->ai_family, SOCK_STREAM, 0);
    if (connect(s, res->ai_addr, res->ai_addrlen)) { close(s); s = -1; usleep(10000); }
  }
  if (s < 0) { perror("connect"); return 1; }
  int one = 1; setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char *msg = calloc(1, (size_t)size), *back = malloc((size_t)size);
  double *rtt = malloc(sizeof(double) * (size_t)count);
  for (long i = 0; i < warmup + count; i++) {
    double t0 = now_us();
    if (full(s, msg, (size_t)size, 1) || full(s, back, (size_t)size, 0)) { fputs("pingpong: peer closed\n", stderr); return 1; }
    if (i >= warmup) rtt[i - warmup] = now_us() - t0;
  }
  close(s);
  char tmp[4096]; snprintf(tmp, sizeof tmp, "%s.tmp", out);
  FILE *f = fopen(tmp, "w");
  if (!f) { perror(tmp); return 1; }
  for (long i = 0; i < count; i++) fprintf(f, "%.3f\n", rtt[i]);
  if (fclose(f) || rename(tmp, out)) { perror(out); return 1; }
  printf("pingpong: %ld round trips written to %s\n", count, out);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGTERM, on_signal); signal(SIGINT, on_signal);
  if (argc < 2 || (argc % 2) != 0) usage();
  long port = -1, count = 1000, size = 64, warmup = 100; const char *peer = "", *out = "";
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--port")) port = strtol(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--peer")) peer = argv[i + 1];
    else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
    else if (!strcmp(argv[i], "--count")) count = strtol(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--size")) size = strtol(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--warmup")) warmup = strtol(argv[i + 1], NULL, 10);
    else usage();
  }
  if (count < 1 || size < 1 || size > 65536 || warmup < 0) usage();
  if (!strcmp(argv[1], "server")) { if (port < 1 || port > 65535) usage(); return serve(port); }
  if (!strcmp(argv[1], "client")) { if (!*peer || !*out) usage(); return client(peer, out, count, size, warmup); }
  usage();
}
