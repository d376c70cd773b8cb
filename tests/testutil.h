/*
 * testutil.h - code shared by upager's cmocka test binaries.
 *
 * Owns: the temporary directory every test file lives in (created by
 * tu_main(), removed at exit), the deterministic byte pattern test files
 * are made of, the reference model a region's bytes are compared with,
 * small thread and child-process utilities, and the userfaultfd probe that
 * turns "not available here" into a skip (exit code 77).
 *
 * Content model: byte o of every pattern file is tu_byte(o), a 64-bit hash
 * of o's 8-byte word, so a shifted, stale or zeroed page never matches by
 * accident. Reference reads go through pread() on the file itself, so
 * holes and the end of file come out exactly as the kernel sees them.
 */
#ifndef UPAGER_TESTUTIL_H
#define UPAGER_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <signal.h>
#include <cmocka.h>

#include <stdbool.h>
#include <sys/types.h>

#include "upager.h"

#define TU_KIB ((size_t)1024)
#define TU_MIB (1024 * TU_KIB)
#define TU_GIB (1024 * TU_MIB)

/* ---- pattern ---- */

/* 64-bit mixer (splitmix64 finaliser). */
uint64_t tu_mix64(uint64_t x);
/* The pattern's byte at offset @off. */
uint8_t tu_byte(uint64_t off);
/* Fills @buf with the pattern bytes [@off, @off + @len). */
void tu_fill(void *buf, uint64_t off, size_t len);

/* ---- files ---- */

/* Path of @name inside the test directory (static storage per call site is
 * not needed: the string is malloc'ed and owned by testutil until exit). */
const char *tu_path(const char *name);
/* Creates @name holding the pattern for [0, @size). Returns its path. */
const char *tu_make_file(const char *name, uint64_t size);
/* An island of pattern bytes written into a sparse file. */
struct tu_island {
	uint64_t off;
	uint64_t len;
};
/* Creates a sparse file of @size bytes (ftruncate) holding pattern bytes
 * only in @isl. Returns its path, or NULL with errno set when the
 * filesystem refuses the size. */
const char *tu_make_sparse(const char *name, uint64_t size,
			   const struct tu_island *isl, size_t n);
/* Opens @path read-only; asserts success. */
int tu_open(const char *path);

/* ---- reference model of a region ---- */

/* Region byte i is store byte @offset + i for i < @length and zero from
 * @length on (the rest of the last unit). Store bytes come from @fd via
 * pread (zeros past its end), or when @fd < 0 from the pattern up to
 * @store_size (zeros after). */
struct tu_ref {
	int fd;
	uint64_t offset;
	size_t length;
	uint64_t store_size;
};

/* Fills @buf with what region bytes [@from, @from + @len) must read as. */
void tu_expected(const struct tu_ref *ref, size_t from, void *buf, size_t len);
/* Compares region bytes base[from, from + len) with @ref. Returns true when
 * they match; otherwise prints the first mismatching offset and returns
 * false. Reading the region faults its pages in. */
bool tu_check(const struct tu_ref *ref, const void *base, size_t from,
	      size_t len);
/* Rounds @x up to a multiple of @a (a power of two). */
static inline size_t tu_round_up(size_t x, size_t a)
{
	return (x + a - 1) & ~(a - 1);
}

/* ---- runtime ---- */

/* Fails the test unless @expr returns 0, naming the error. */
#define TU_OK(expr)                                                       \
	do {                                                              \
		int tu_rc_ = (expr);                                      \
		if (tu_rc_ != 0)                                          \
			fail_msg("%s: %d (%s)", #expr, tu_rc_,            \
				 upager_strerror(tu_rc_));                \
	} while (0)
/* Fails the test unless @expr returns exactly @want. */
#define TU_ERR(expr, want)                                                \
	do {                                                              \
		int tu_rc_ = (expr), tu_want_ = (want);                   \
		if (tu_rc_ != tu_want_)                                   \
			fail_msg("%s: %d (%s), want %d (%s)", #expr,      \
				 tu_rc_, upager_strerror(tu_rc_),         \
				 tu_want_, upager_strerror(tu_want_));    \
	} while (0)

/* upager_create() that asserts success. */
upager_t *tu_runtime(const struct upager_config *cfg);
/* A runtime with UPAGER_CFG_INLINE; skips the test where the kernel lacks
 * UFFD_FEATURE_SIGBUS. */
upager_t *tu_inline_runtime(void);
/* upager_store_file() that asserts success. */
upager_store_t *tu_store_file(const char *path, unsigned flags);
/* upager_map() that asserts success; returns the address. */
void *tu_map(upager_t *up, upager_store_t *s, uint64_t offset, size_t length,
	     size_t page_size, size_t readahead);
/* upager_stats() that asserts success. */
struct upager_stats tu_stats(upager_t *up, void *addr);
/* tu_stats() once two reads 20 ms apart agree (fails after 5 s): for
 * checks made when the application is done but prefetch installs may
 * still be being counted. */
struct upager_stats tu_stats_settled(upager_t *up, void *addr);
/* Sum of the fault time histogram. */
uint64_t tu_hist_sum(const struct upager_stats *st);
/* Prints the interesting counters of @st, prefixed with @what. */
void tu_print_stats(const char *what, const struct upager_stats *st);

/* ---- time, randomness, threads, children ---- */

uint64_t tu_now_ns(void);
void tu_sleep_ms(unsigned ms);
/* The thread of this process named @name (its comm, e.g. "upager-mgr"),
 * or 0 if there is none; with several, any one of them. */
pid_t tu_thread_tid(const char *name);
/* The threads of this process whose comm starts with @prefix; with NULL,
 * all but io_uring's own workers ("iou-wrk-N", "iou-sqp-N"): those
 * belong to the kernel and leave on their own time after their ring is
 * closed, so a count taken just after one test may still see them. */
size_t tu_count_threads(const char *prefix);
/* tu_count_threads(@prefix) once it is at most @most, or after 2 s. A
 * thread pthread_join() has returned for is still listed for a moment
 * (the kernel wakes the joiner before it removes the thread). */
size_t tu_wait_threads(const char *prefix, size_t most);
/* xorshift64* step; *state must be non-zero. */
uint64_t tu_rand(uint64_t *state);
/* Fisher-Yates shuffle of @n indices with seed @seed (0..n-1 on entry
 * when @init). */
void tu_shuffle(size_t *idx, size_t n, uint64_t seed, bool init);

/* Runs fn(arg + i * stride) in @n threads and joins them all. */
/* Fills @len bytes at @p with words and blanks drawn from @rng: data lz4
 * compresses well (over 1.5x), unlike tu_fill(). */
void tu_fill_text(uint8_t *p, size_t len, uint64_t *rng);
void tu_run_threads(unsigned n, void *(*fn)(void *), void *args,
		    size_t stride);
/* Reads every one of @nunits units of @page bytes at @base from @threads
 * threads (at most 16; units dealt round-robin, in a shuffled order when
 * @random, from @seed), each first at a random byte of the unit, and
 * compares it with @ref; fails the test on any mismatch. */
void tu_scan_units(const struct tu_ref *ref, const void *base, size_t page,
		   size_t nunits, unsigned threads, bool random, uint64_t seed);

/* In a forked child: SIGSEGV and SIGBUS back to the default action so the
 * child dies from them (the test framework catches them otherwise).
 * Async-signal-safe. */
void tu_child_default_signals(void);
/* Waits for @pid at most @timeout_ms. Returns true and the status when it
 * ended; on timeout kills it with SIGKILL, reaps it and returns false. */
bool tu_wait_child(pid_t pid, unsigned timeout_ms, int *status);
/* Describes a wait status into @buf ("exit 3", "signal 7 (Bus error)"). */
const char *tu_status_str(int status, char *buf, size_t size);

/* ---- catching SIGBUS in this process ---- */

/* Counted SIGBUS catches and the last one's si_addr. */
extern volatile int tu_sigbus_count;
extern void *volatile tu_sigbus_addr;
/* Installs the catcher as the SIGBUS handler (the previous action goes to
 * *old) and zeroes tu_sigbus_count. */
void tu_sigbus_catch(struct sigaction *old);
/* Whether the catcher is the current SIGBUS handler. */
bool tu_sigbus_catching(void);
/* Reads *p; true when that raised SIGBUS (caught, counted, and the read
 * abandoned); false with the byte in *val otherwise. */
bool tu_read_raises_sigbus(const volatile uint8_t *p, uint8_t *val);

/* ---- skipping and main ---- */

/* Marks the current test skipped with a printed reason (then calls
 * cmocka's skip()). When the binary ran a single selected test case and
 * it skipped, tu_main() returns 77. */
#define tu_skip(...)                    \
	do {                            \
		tu_note_skip(__VA_ARGS__); \
		skip();                 \
	} while (0)
void tu_note_skip(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

/* Common main: makes the temp directory, probes userfaultfd (exit 77 with
 * a reason when the process may not use it), runs @tests (only those whose
 * name contains argv[1] when given), removes the temp directory. */
int tu_main(int argc, char **argv, const char *group,
	    const struct CMUnitTest *tests, size_t n);

#define TU_MAIN(group, tests)                                        \
	int main(int argc, char **argv)                              \
	{                                                            \
		return tu_main(argc, argv, group, tests,             \
			       sizeof(tests) / sizeof((tests)[0]));  \
	}

#endif /* UPAGER_TESTUTIL_H */
