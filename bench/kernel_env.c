/*
 * kernel_env.c - the kernel side's environment for upager-budget-bench: v1
 * memory cgroups and a zram swap device, made by the program (as root) and
 * removed at exit, on failure and on SIGINT/SIGTERM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernel_env.h"

static char cg_paths[4][256];
int zram_id = -1;
static bool zram_swapon;

static int write_file(const char *path, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int write_file(const char *path, const char *fmt, ...)
{
	char buf[128];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t w = write(fd, buf, (size_t)n);
	int rc = w == n ? 0 : (w < 0 ? -errno : -EIO);
	close(fd);
	return rc;
}

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, len - 1);
	int rc = n < 0 ? -errno : 0;
	buf[n > 0 ? n : 0] = 0;
	close(fd);
	return rc;
}

uint64_t read_u64(const char *path)
{
	char buf[64];
	if (read_file(path, buf, sizeof(buf)))
		return 0;
	return strtoull(buf, NULL, 10);
}

/* Makes cgroup slot @i with memory limit @limit. Returns its path or NULL
 * with a reason in @why. */
const char *cg_create(int i, uint64_t limit, char *why, size_t wl)
{
	char p[300];
	snprintf(cg_paths[i], sizeof(cg_paths[i]), CG_ROOT
		 "/upager-bench-%d-%d", (int)getpid(), i);
	if (mkdir(cg_paths[i], 0755)) {
		snprintf(why, wl, "cannot create %.160s: %s", cg_paths[i],
			 strerror(errno));
		cg_paths[i][0] = 0;
		return NULL;
	}
	snprintf(p, sizeof(p), "%s/memory.limit_in_bytes", cg_paths[i]);
	int rc = write_file(p, "%" PRIu64, limit);
	if (rc) {
		snprintf(why, wl, "cannot set %.160s: %s", p, strerror(-rc));
		rmdir(cg_paths[i]);
		cg_paths[i][0] = 0;
		return NULL;
	}
	return cg_paths[i];
}

void cg_remove(int i)
{
	if (!cg_paths[i][0])
		return;
	for (int t = 0; t < 50 && rmdir(cg_paths[i]) && errno == EBUSY; t++)
		usleep(100000);
	cg_paths[i][0] = 0;
}

static void zram_path(char *buf, size_t len, const char *attr)
{
	if (attr)
		snprintf(buf, len, "/sys/block/zram%d/%s", zram_id, attr);
	else
		snprintf(buf, len, "/dev/zram%d", zram_id);
}

void zram_teardown(void)
{
	char p[128];
	if (zram_id < 0)
		return;
	if (zram_swapon) {
		zram_path(p, sizeof(p), NULL);
		if (swapoff(p))
			fprintf(stderr, "warning: swapoff %s: %s\n", p,
				strerror(errno));
		zram_swapon = false;
	}
	zram_path(p, sizeof(p), "reset");
	write_file(p, "1");
	if (write_file("/sys/class/zram-control/hot_remove", "%d", zram_id))
		fprintf(stderr, "warning: could not remove zram%d\n", zram_id);
	zram_id = -1;
}

void kernel_env_teardown(void)
{
	zram_teardown();
	for (int i = 0; i < 4; i++)
		cg_remove(i);
}

/* Runs mkswap on @dev quietly. */
static int run_mkswap(const char *dev)
{
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int nul = open("/dev/null", O_WRONLY);
		if (nul >= 0) {
			dup2(nul, 1);
			dup2(nul, 2);
		}
		execlp("mkswap", "mkswap", dev, (char *)NULL);
		execl("/usr/sbin/mkswap", "mkswap", dev, (char *)NULL);
		execl("/sbin/mkswap", "mkswap", dev, (char *)NULL);
		_exit(127);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
		return -ENOENT;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

/* A new zram device with lz4 as a swap device of top priority. */
bool zram_setup(uint64_t disksize, char *why, size_t wl)
{
	char buf[64], p[128];
	if (access("/sys/class/zram-control/hot_add", R_OK)) {
		/* The module may not be loaded: try once. */
		if (system("modprobe zram >/dev/null 2>&1") != 0 ||
		    access("/sys/class/zram-control/hot_add", R_OK)) {
			snprintf(why, wl, "zram unavailable (no "
				 "/sys/class/zram-control; modprobe zram "
				 "failed)");
			return false;
		}
	}
	if (read_file("/sys/class/zram-control/hot_add", buf, sizeof(buf))) {
		snprintf(why, wl, "zram hot_add failed: %s", strerror(errno));
		return false;
	}
	zram_id = atoi(buf);
	zram_path(p, sizeof(p), "comp_algorithm");
	int rc = write_file(p, "lz4");
	if (rc) {
		snprintf(why, wl, "zram%d: lz4 not accepted: %s", zram_id,
			 strerror(-rc));
		return false;
	}
	zram_path(p, sizeof(p), "disksize");
	rc = write_file(p, "%" PRIu64, disksize);
	if (rc) {
		snprintf(why, wl, "zram%d: disksize: %s", zram_id,
			 strerror(-rc));
		return false;
	}
	zram_path(p, sizeof(p), NULL);
	rc = run_mkswap(p);
	if (rc) {
		snprintf(why, wl, "mkswap %s failed%s", p,
			 rc == -ENOENT ? " (mkswap not found)" : "");
		return false;
	}
	if (swapon(p, SWAP_FLAG_PREFER | (32767 << SWAP_FLAG_PRIO_SHIFT))) {
		snprintf(why, wl, "swapon %s: %s", p, strerror(errno));
		return false;
	}
	zram_swapon = true;
	return true;
}

/* Reads orig_data_size, compr_data_size, mem_used_total of our zram. */
void zram_mm_stat(uint64_t *orig, uint64_t *compr, uint64_t *used)
{
	char p[128], buf[256];
	*orig = *compr = *used = 0;
	if (zram_id < 0)
		return;
	zram_path(p, sizeof(p), "mm_stat");
	if (read_file(p, buf, sizeof(buf)) == 0) {
		unsigned long long a = 0, b = 0, c = 0;
		if (sscanf(buf, "%llu %llu %llu", &a, &b, &c) == 3) {
			*orig = a;
			*compr = b;
			*used = c;
		}
	}
}

/* In a child: moves this process into cgroup @cg. */
int cg_join(const char *cg)
{
	char p[300];
	snprintf(p, sizeof(p), "%s/cgroup.procs", cg);
	return write_file(p, "%d", (int)getpid());
}
