/*
 * test_follow.c - where the manager thread runs: pinned to the CPU of the
 * one thread that makes the faults, following it to another CPU, unpinned
 * when two threads on two CPUs fault alike, never pinned with
 * UPAGER_CFG_NO_FOLLOW. The manager thread is found by its name,
 * upager-mgr; the data read is checked byte for byte all along.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SIZE (16 * TU_MIB)
#define WAIT_MS 10000u

static const char *data_path(void)
{
	static const char *p;
	if (!p)
		p = tu_make_file("follow.dat", SIZE);
	return p;
}

/* The manager thread of the one runtime alive in this process. */
static pid_t manager_tid(void)
{
	pid_t tid = tu_thread_tid("upager-mgr");
	assert_true(tid > 0);
	return tid;
}

/* The single CPU tid may run on, or -1 when it may run on several. */
static int pinned_cpu(pid_t tid)
{
	cpu_set_t s;
	assert_int_equal(sched_getaffinity(tid, sizeof(s), &s), 0);
	if (CPU_COUNT(&s) != 1)
		return -1;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &s))
			return c;
	return -1;
}

static void pin_self(int cpu)
{
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	assert_int_equal(sched_setaffinity(0, sizeof(s), &s), 0);
}

/* Two CPUs this process may use, or skips the test. */
static void two_cpus(int *a, int *b, cpu_set_t *all)
{
	assert_int_equal(sched_getaffinity(0, sizeof(*all), all), 0);
	*a = *b = -1;
	for (int c = 0; c < CPU_SETSIZE && *b < 0; c++) {
		if (!CPU_ISSET(c, all))
			continue;
		if (*a < 0)
			*a = c;
		else
			*b = c;
	}
	if (*b < 0)
		tu_skip("needs two CPUs, this process may use one");
}

struct region {
	upager_t *up;
	uint8_t *base;
};

static struct region open_region(unsigned flags)
{
	struct upager_config cfg = { .flags = flags };
	struct region g;
	g.up = tu_runtime(&cfg);
	upager_store_t *s = tu_store_file(data_path(), 0);
	g.base = tu_map(g.up, s, 0, SIZE, 4 * TU_KIB, 0);
	upager_store_release(s);
	TU_OK(upager_advise(g.up, g.base, SIZE, UPAGER_ADV_RANDOM));
	return g;
}

static void close_region(struct region *g)
{
	TU_OK(upager_unmap(g->up, g->base));
	upager_destroy(g->up);
}

/* Random one-byte reads, each a fault most of the time (the region is
 * dropped every 512 reads), checked against the file's bytes. */
static void fault_some(const struct region *g, uint64_t *rng, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		if ((i & 511) == 0)
			TU_OK(upager_advise(g->up, g->base, SIZE,
					    UPAGER_ADV_DONTNEED));
		size_t off = (size_t)(tu_rand(rng) % SIZE);
		uint8_t v = g->base[off];
		if (v != tu_byte(off))
			fail_msg("byte %zu: %u, want %u", off, v, tu_byte(off));
	}
}

/* Faults from this thread until the manager's pinned CPU is @want (-1:
 * not pinned); fails after WAIT_MS. */
static void fault_until(const struct region *g, pid_t mgr, int want,
			uint64_t *rng)
{
	uint64_t end = tu_now_ns() + WAIT_MS * 1000000ull;
	while (pinned_cpu(mgr) != want) {
		if (tu_now_ns() > end)
			fail_msg("manager on CPU %d after %u ms, want %d",
				 pinned_cpu(mgr), WAIT_MS, want);
		fault_some(g, rng, 256);
	}
}

/* A runtime whose manager follows this thread, pinned to CPU a. */
static struct region pinned_runtime(int *a, int *b, cpu_set_t *all,
				    pid_t *mgr, uint64_t *rng)
{
	two_cpus(a, b, all);
	struct region g = open_region(0);
	pin_self(*a);
	*mgr = manager_tid();
	fault_until(&g, *mgr, *a, rng);
	return g;
}

static void test_manager_follows_the_faulting_thread(void **state)
{
	(void)state;
	int a, b;
	cpu_set_t all;
	pid_t mgr;
	uint64_t rng = 1;
	struct region g = pinned_runtime(&a, &b, &all, &mgr, &rng);
	pin_self(b);
	fault_until(&g, mgr, b, &rng);
	close_region(&g);
}

struct faulter {
	const struct region *g;
	int cpu;
	atomic_bool *stop;
	uint64_t seed;
};

static void *faulter_main(void *arg)
{
	struct faulter *f = arg;
	pin_self(f->cpu);
	uint64_t rng = f->seed;
	while (!atomic_load(f->stop)) {
		/* Both threads drop the region: no one thread's faults can
		 * outnumber the other's for long. */
		fault_some(f->g, &rng, 64);
	}
	return NULL;
}

static void test_two_faulting_threads_unpin_the_manager(void **state)
{
	(void)state;
	int a, b;
	cpu_set_t all;
	pid_t mgr;
	uint64_t rng = 2;
	struct region g = pinned_runtime(&a, &b, &all, &mgr, &rng);
	assert_int_equal(sched_setaffinity(0, sizeof(all), &all), 0);

	atomic_bool stop = false;
	struct faulter f[2] = {
		{ .g = &g, .cpu = a, .stop = &stop, .seed = 3 },
		{ .g = &g, .cpu = b, .stop = &stop, .seed = 4 },
	};
	pthread_t t[2];
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&t[i], NULL, faulter_main,
						&f[i]), 0);
	uint64_t end = tu_now_ns() + WAIT_MS * 1000000ull;
	while (pinned_cpu(mgr) != -1 && tu_now_ns() < end)
		tu_sleep_ms(5);
	int cpu = pinned_cpu(mgr);
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	if (cpu != -1)
		fail_msg("manager still pinned to CPU %d after %u ms", cpu,
			 WAIT_MS);
	cpu_set_t now;
	assert_int_equal(sched_getaffinity(mgr, sizeof(now), &now), 0);
	assert_true(CPU_EQUAL(&now, &all));
	close_region(&g);
}

static void test_no_follow_leaves_the_manager_alone(void **state)
{
	(void)state;
	int a, b;
	cpu_set_t all;
	two_cpus(&a, &b, &all);
	struct region g = open_region(UPAGER_CFG_NO_FOLLOW);
	pin_self(a);
	pid_t mgr = manager_tid();
	uint64_t rng = 5, end = tu_now_ns() + 300 * 1000000ull;
	/* 300 ms: 30 windows of 10 ms, any of which would pin it. */
	while (tu_now_ns() < end) {
		fault_some(&g, &rng, 256);
		assert_int_equal(pinned_cpu(mgr), -1);
	}
	struct upager_stats st = tu_stats(g.up, g.base);
	assert_true(st.faults > 256);
	close_region(&g);
}

/* Whatever a test did to this thread's affinity, the next one starts
 * with the process's own. */
static cpu_set_t start_mask;

static int save_mask(void **state)
{
	(void)state;
	return sched_getaffinity(0, sizeof(start_mask), &start_mask);
}

static int restore_mask(void **state)
{
	(void)state;
	return sched_setaffinity(0, sizeof(start_mask), &start_mask);
}

#define T(f) cmocka_unit_test_setup_teardown(f, save_mask, restore_mask)

static const struct CMUnitTest tests[] = {
	T(test_manager_follows_the_faulting_thread),
	T(test_two_faulting_threads_unpin_the_manager),
	T(test_no_follow_leaves_the_manager_alone),
};

TU_MAIN("follow", tests)
