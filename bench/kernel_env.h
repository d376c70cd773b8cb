/*
 * kernel_env.h - v1 memory cgroups and a zram swap device for the kernel
 * side of upager-budget-bench (kernel_env.c). Needs root.
 */
#ifndef UPAGER_BENCH_KERNEL_ENV_H
#define UPAGER_BENCH_KERNEL_ENV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CG_ROOT "/sys/fs/cgroup/memory"

/* The zram device zram_setup() made, or -1. */
extern int zram_id;

/* Makes cgroup slot @i (0..3) with memory limit @limit. Returns its path,
 * or NULL with a reason in @why. */
const char *cg_create(int i, uint64_t limit, char *why, size_t wl);
void cg_remove(int i);
/* In a child: moves this process into cgroup @cg. 0 or -errno. */
int cg_join(const char *cg);

/* A new zram device with lz4 as a swap device of top priority; false with
 * a reason in @why. */
bool zram_setup(uint64_t disksize, char *why, size_t wl);
void zram_teardown(void);
/* orig_data_size, compr_data_size and mem_used_total of our zram. */
void zram_mm_stat(uint64_t *orig, uint64_t *compr, uint64_t *used);

/* A number read from a sysfs or cgroup file, 0 if unreadable. */
uint64_t read_u64(const char *path);

/* Removes the zram device and every cgroup made (atexit-safe). */
void kernel_env_teardown(void);

#endif
