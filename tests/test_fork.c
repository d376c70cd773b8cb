/*
 * test_fork.c - regions are excluded from fork(): a child that touches a
 * region (a page already installed or not, read or write) dies with
 * SIGSEGV instead of reading zeros, and the parent keeps reading the
 * right bytes. Children only touch memory and _exit (async-signal-safe:
 * the parent has runtime threads when it forks).
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define FILE_SIZE (4 * TU_MIB)
#define REGION_LEN (TU_MIB)

enum { CHILD_SURVIVED = 13 };

static const char *data_path(void)
{
	static const char *p;
	if (!p)
		p = tu_make_file("fork.dat", FILE_SIZE);
	return p;
}

enum touch { TOUCH_READ, TOUCH_WRITE };

/* Forks a child that touches @p and returns its wait status. */
static int child_touch(volatile uint8_t *p, enum touch how)
{
	int status = 0;

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		tu_child_default_signals();
		if (how == TOUCH_READ) {
			uint8_t v = *p;
			(void)v;
			_exit(CHILD_SURVIVED);
		}
		*p = 1;
		_exit(CHILD_SURVIVED);
	}
	if (!tu_wait_child(pid, 20000, &status))
		fail_msg("child touching %p hung", (void *)p);
	return status;
}

static void expect_sigsegv(volatile uint8_t *p, enum touch how,
			   const char *what)
{
	char buf[64];
	int status = child_touch(p, how);
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGSEGV)
		fail_msg("child %s %s: %s, want SIGSEGV (exit %d: it read "
			 "or wrote the page)",
			 how == TOUCH_READ ? "reading" : "writing", what,
			 tu_status_str(status, buf, sizeof(buf)),
			 CHILD_SURVIVED);
}

static void test_child_touching_region_gets_sigsegv(void **state)
{
	(void)state;
	static const size_t pages[] = { 4 * TU_KIB, 64 * TU_KIB };

	for (size_t k = 0; k < 2; k++) {
		size_t page = pages[k];
		upager_t *up = tu_runtime(NULL);
		upager_store_t *s = tu_store_file(data_path(), 0);
		uint8_t *base = tu_map(up, s, 4096, REGION_LEN, page, 0);
		upager_store_release(s);
		int fd = tu_open(data_path());
		struct tu_ref ref = { .fd = fd, .offset = 4096,
				      .length = REGION_LEN };

		/* First half present, and one page written by the parent. */
		assert_true(tu_check(&ref, base, 0, REGION_LEN / 2));
		base[8192] ^= 0xff;

		/* The child itself works: memory outside regions is fine. */
		uint8_t *heap = malloc(4096);
		assert_non_null(heap);
		heap[0] = 42;
		char buf[64];
		int status = child_touch(heap, TOUCH_READ);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != CHILD_SURVIVED)
			fail_msg("child reading the heap: %s",
				 tu_status_str(status, buf, sizeof(buf)));
		free(heap);

		expect_sigsegv(base, TOUCH_READ, "an installed page");
		expect_sigsegv(base + 8192, TOUCH_READ, "a written page");
		expect_sigsegv(base + REGION_LEN - 1, TOUCH_READ,
			       "a page never touched");
		expect_sigsegv(base + 4096, TOUCH_WRITE, "an installed page");
		expect_sigsegv(base + REGION_LEN / 2 + page, TOUCH_WRITE,
			       "a page never touched");

		/* The parent's view did not change. */
		base[8192] ^= 0xff;
		assert_true(tu_check(&ref, base, 0, REGION_LEN));
		struct upager_stats st = tu_stats_settled(up, base);
		assert_int_equal(st.pages_installed, REGION_LEN / page);
		assert_int_equal(st.read_errors, 0);
		close(fd);
		TU_OK(upager_unmap(up, base));
		upager_destroy(up);
	}
}

/* Forks while application threads fault: the runtime keeps serving the
 * parent, and children that stay out of regions exit normally. */
struct faulter {
	upager_t *up;
	uint8_t *base;
	const struct tu_ref *ref;
	atomic_bool stop;
	atomic_uint failures;
};

static void *faulter_thread(void *p)
{
	struct faulter *f = p;
	uint64_t rnd = 12345;
	size_t npages = REGION_LEN / 4096;

	while (!atomic_load(&f->stop)) {
		size_t pg = (size_t)(tu_rand(&rnd) % npages);
		if (!tu_check(f->ref, f->base, pg * 4096, 4096))
			atomic_fetch_add(&f->failures, 1);
		if (pg % 7 == 0 && upager_advise(f->up, f->base + pg * 4096,
						 4096, UPAGER_ADV_DONTNEED))
			atomic_fetch_add(&f->failures, 1);
	}
	return NULL;
}

static void test_fork_while_faulting(void **state)
{
	(void)state;
	upager_t *up = tu_runtime(NULL);
	upager_store_t *s = tu_store_file(data_path(), 0);
	uint8_t *base = tu_map(up, s, 0, REGION_LEN, 0, 0);
	upager_store_release(s);
	int fd = tu_open(data_path());
	struct tu_ref ref = { .fd = fd, .offset = 0, .length = REGION_LEN };
	struct faulter f = { .up = up, .base = base, .ref = &ref };
	pthread_t t;

	atomic_init(&f.stop, false);
	atomic_init(&f.failures, 0);
	assert_int_equal(pthread_create(&t, NULL, faulter_thread, &f), 0);
	for (int i = 0; i < 50; i++) {
		int status = 0;
		pid_t pid = fork();
		if (pid == 0)
			_exit(7);
		if (pid < 0)
			break;
		if (!tu_wait_child(pid, 20000, &status) ||
		    !WIFEXITED(status) || WEXITSTATUS(status) != 7) {
			atomic_store(&f.stop, true);
			pthread_join(t, NULL);
			fail_msg("child %d did not exit normally", i);
		}
	}
	atomic_store(&f.stop, true);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(atomic_load(&f.failures), 0);
	assert_true(tu_check(&ref, base, 0, REGION_LEN));
	close(fd);
	TU_OK(upager_unmap(up, base));
	upager_destroy(up);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_child_touching_region_gets_sigsegv),
	cmocka_unit_test(test_fork_while_faulting),
};

TU_MAIN("fork", tests)
