// Prototype loader for sockops.bpf.o (libbpf 1.1). Experiments only.
//   loader -c CGROUP_DIR [-p PIN_DIR] [-L] [-r] [-k link|legacy] [-n]
//   -p: pin sockops_hash, sockops_sk, sockops_pairs, sockops_counters and the sk_msg program in PIN_DIR
//   -L: also pin the sock_ops cgroup link (PIN_DIR/sockops_link)
//   -r: reuse the maps pinned in PIN_DIR (bpf_map__reuse_fd) instead of new ones
//   -k: how sk_msg is attached to the sockhash: legacy BPF_PROG_ATTACH (default) or a bpf_link (6.10+)
//   -n: do not attach sock_ops (only sk_msg)
// Prints what it did, then sleeps until killed. SIGTERM/SIGINT: detach and exit.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_sig(int s) { (void)s; stop = 1; }

static const char *maps[] = {"sockops_hash", "sockops_sk", "sockops_pairs", "sockops_counters", NULL};

int main(int argc, char **argv)
{
	const char *cg = NULL, *pin = NULL, *obj_path = "sockops.bpf.o", *kind = "legacy";
	int pin_link = 0, reuse = 0, no_sockops = 0, opt;
	char path[512];

	while ((opt = getopt(argc, argv, "c:p:Lrk:no:")) != -1) {
		switch (opt) {
		case 'c': cg = optarg; break;
		case 'p': pin = optarg; break;
		case 'L': pin_link = 1; break;
		case 'r': reuse = 1; break;
		case 'k': kind = optarg; break;
		case 'n': no_sockops = 1; break;
		case 'o': obj_path = optarg; break;
		default: fprintf(stderr, "bad args\n"); return 2;
		}
	}
	if (!cg) { fprintf(stderr, "-c CGROUP_DIR needed\n"); return 2; }
	struct bpf_object *obj = bpf_object__open_file(obj_path, NULL);
	if (!obj) { perror("open"); return 1; }
	if (reuse && pin) {
		for (int i = 0; maps[i]; i++) {
			snprintf(path, sizeof path, "%s/%s", pin, maps[i]);
			int fd = bpf_obj_get(path);
			if (fd < 0) { printf("reuse %s: %s\n", maps[i], strerror(errno)); continue; }
			int err = bpf_map__reuse_fd(bpf_object__find_map_by_name(obj, maps[i]), fd);
			printf("reuse %s fd %d: %d\n", maps[i], fd, err);
		}
	}
	int err = bpf_object__load(obj);
	if (err) { fprintf(stderr, "load: %d\n", err); return 1; }
	struct bpf_program *msg = bpf_object__find_program_by_name(obj, "sockops_redirect");
	struct bpf_program *ops = bpf_object__find_program_by_name(obj, "sockops_established");
	int map_fd = bpf_map__fd(bpf_object__find_map_by_name(obj, "sockops_hash"));
	struct bpf_map_info info = {}; __u32 len = sizeof info;
	bpf_obj_get_info_by_fd(map_fd, &info, &len);
	struct bpf_map *m;
	bpf_object__for_each_map(m, obj) {
		struct bpf_map_info mi = {}; __u32 ml = sizeof mi;
		bpf_obj_get_info_by_fd(bpf_map__fd(m), &mi, &ml);
		printf("map %s id %u\n", bpf_map__name(m), mi.id);
	}
	(void)info; (void)len;
	int msg_link_fd = -1;
	if (!strcmp(kind, "link")) {
		msg_link_fd = bpf_link_create(bpf_program__fd(msg), map_fd, BPF_SK_MSG_VERDICT, NULL);
		printf("sk_msg link_create: %s\n", msg_link_fd < 0 ? strerror(errno) : "ok");
	} else {
		err = bpf_prog_attach(bpf_program__fd(msg), map_fd, BPF_SK_MSG_VERDICT, 0);
		printf("sk_msg prog_attach: %s\n", err ? strerror(errno) : "ok");
	}
	struct bpf_link *link = NULL;
	if (!no_sockops) {
		int cgfd = open(cg, O_RDONLY | O_DIRECTORY);
		if (cgfd < 0) { perror(cg); return 1; }
		link = bpf_program__attach_cgroup(ops, cgfd);
		printf("sock_ops attach_cgroup (bpf_link): %s\n", link ? "ok" : strerror(errno));
		struct bpf_link *eg = bpf_program__attach_cgroup(bpf_object__find_program_by_name(obj, "sockops_syn_egress"), cgfd);
		printf("cgroup_skb/egress attach_cgroup (bpf_link): %s\n", eg ? "ok" : strerror(errno));
		if (pin && pin_link && eg) {
			snprintf(path, sizeof path, "%s/sockops_egress_link", pin);
			unlink(path);
			printf("pin %s: %d\n", path, bpf_link__pin(eg, path));
		}
	}
	struct bpf_program *rl = bpf_object__find_program_by_name(obj, "sockops_recv_length");
	if (rl) {
		struct bpf_link *rlink = bpf_program__attach(rl);
		printf("tp_btf/sock_recv_length attach: %s\n", rlink ? "ok" : strerror(errno));
	}
	if (pin) {
		for (int i = 0; maps[i]; i++) {
			snprintf(path, sizeof path, "%s/%s", pin, maps[i]);
			if (access(path, F_OK) == 0) continue;
			err = bpf_map__pin(bpf_object__find_map_by_name(obj, maps[i]), path);
			printf("pin %s: %d\n", path, err);
		}
		snprintf(path, sizeof path, "%s/sockops_redirect", pin);
		unlink(path);
		printf("pin %s: %d\n", path, bpf_program__pin(msg, path));
		if (pin_link && link) {
			snprintf(path, sizeof path, "%s/sockops_link", pin);
			unlink(path);
			printf("pin %s: %d\n", path, bpf_link__pin(link, path));
		}
	}
	printf("ready pid %d\n", getpid());
	fflush(stdout);
	signal(SIGTERM, on_sig);
	signal(SIGINT, on_sig);
	while (!stop)
		pause();
	printf("detaching\n");
	if (link) bpf_link__destroy(link);
	if (msg_link_fd < 0)
		bpf_prog_detach2(bpf_program__fd(msg), map_fd, BPF_SK_MSG_VERDICT);
	bpf_object__close(obj);
	return 0;
}
