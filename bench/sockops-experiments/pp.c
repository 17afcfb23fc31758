// Ping-pong latency: pp server PORT | pp client HOST PORT SIZE COUNT
// Server echoes SIZE-byte messages (size learned from the first 4 bytes); client
// prints p50/p99 round trip in microseconds and round trips per second.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>

static int rd(int fd, char *b, size_t n) { size_t g = 0; while (g < n) { ssize_t r = read(fd, b + g, n - g); if (r <= 0) return -1; g += r; } return 0; }
static int wr(int fd, const char *b, size_t n) { size_t g = 0; while (g < n) { ssize_t r = write(fd, b + g, n - g); if (r <= 0) return -1; g += r; } return 0; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv)
{
	int one = 1;
	signal(SIGCHLD, SIG_IGN);
	if (argc >= 3 && !strcmp(argv[1], "server")) {
		int l = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
		setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(l, (void *)&a, sizeof a) || listen(l, 128)) { perror("bind"); return 1; }
		for (;;) {
			int c = accept(l, NULL, NULL);
			if (c < 0) continue;
			if (fork() == 0) {
				unsigned sz; setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
				if (rd(c, (char *)&sz, 4)) _exit(0);
				char *b = malloc(sz);
				while (!rd(c, b, sz) && !wr(c, b, sz)) ;
				_exit(0);
			}
			close(c);
		}
	}
	if (argc < 6) { fprintf(stderr, "usage\n"); return 2; }
	unsigned sz = atoi(argv[4]); int n = atoi(argv[5]);
	int c = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
	inet_pton(AF_INET, argv[2], &a.sin_addr);
	if (connect(c, (void *)&a, sizeof a)) { perror("connect"); return 1; }
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	wr(c, (char *)&sz, 4);
	char *b = malloc(sz), *r = malloc(sz);
	for (unsigned i = 0; i < sz; i++) b[i] = i * 7 + 3;
	double *lat = malloc(sizeof(double) * n), t0 = now();
	for (int i = 0; i < 200; i++) { wr(c, b, sz); rd(c, r, sz); } // warm-up
	t0 = now();
	for (int i = 0; i < n; i++) {
		double s = now();
		if (wr(c, b, sz) || rd(c, r, sz)) { fprintf(stderr, "io error\n"); return 1; }
		lat[i] = now() - s;
		if (memcmp(b, r, sz)) { fprintf(stderr, "MISMATCH at %d\n", i); return 1; }
	}
	double total = now() - t0;
	qsort(lat, n, sizeof(double), cmp);
	printf("size %u n %d p50 %.1f us p99 %.1f us  %.0f rt/s\n", sz, n, lat[n / 2], lat[n * 99 / 100], n / total * 1e6);
	return 0;
}
