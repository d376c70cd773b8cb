/*
 * stats.c - counters, the fault-latency histogram, error strings.
 *
 * Counters are relaxed atomics updated by the manager and the workers;
 * readers sum them without stopping anyone, so each counter is exact but
 * a set of them is not a snapshot.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <time.h>

#include "internal.h"

uint64_t upager__now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void upager__hist_add(struct upager__counters *c, uint64_t ns)
{
	uint64_t us = ns / 1000;
	unsigned b = 0;
	while (us >= 2 && b < UPAGER_HIST_BUCKETS - 1) {
		us >>= 1;
		b++;
	}
	CNT_INC(c, hist[b], 1);
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

void upager__counters_add_to(const struct upager__counters *c,
			     struct upager_stats *out)
{
	out->faults += LOAD(c->faults);
	out->pages_installed += LOAD(c->installed);
	out->bytes_fetched += LOAD(c->bytes_fetched);
	out->prefetched += LOAD(c->prefetched);
	out->zero_pages += LOAD(c->zero);
	out->read_errors += LOAD(c->read_errors);
	out->retries += LOAD(c->retries);
	out->evictions += LOAD(c->evictions);
	out->writebacks += LOAD(c->writebacks);
	out->write_errors += LOAD(c->write_errors);
	for (unsigned i = 0; i < UPAGER_HIST_BUCKETS; i++)
		out->fault_us_hist[i] += LOAD(c->hist[i]);
}

void upager__counters_fold(struct upager__counters *dst,
			   const struct upager__counters *src)
{
	CNT_INC(dst, faults, LOAD(src->faults));
	CNT_INC(dst, installed, LOAD(src->installed));
	CNT_INC(dst, bytes_fetched, LOAD(src->bytes_fetched));
	CNT_INC(dst, prefetched, LOAD(src->prefetched));
	CNT_INC(dst, zero, LOAD(src->zero));
	CNT_INC(dst, read_errors, LOAD(src->read_errors));
	CNT_INC(dst, retries, LOAD(src->retries));
	CNT_INC(dst, evictions, LOAD(src->evictions));
	CNT_INC(dst, writebacks, LOAD(src->writebacks));
	CNT_INC(dst, write_errors, LOAD(src->write_errors));
	for (unsigned i = 0; i < UPAGER_HIST_BUCKETS; i++)
		CNT_INC(dst, hist[i], LOAD(src->hist[i]));
}

uint64_t upager_stats_percentile(const struct upager_stats *st, double pct)
{
	if (!st || !(pct > 0.0) || pct > 100.0)
		return 0;
	uint64_t total = 0;
	for (unsigned i = 0; i < UPAGER_HIST_BUCKETS; i++)
		total += st->fault_us_hist[i];
	if (total == 0)
		return 0;
	/* Rank of the sample, 1-based, rounded up. */
	double want = pct / 100.0 * (double)total;
	uint64_t rank = (uint64_t)want;
	if ((double)rank < want)
		rank++;
	if (rank == 0)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < UPAGER_HIST_BUCKETS; i++) {
		seen += st->fault_us_hist[i];
		if (seen >= rank)
			return 2ull << i; /* upper bound of bucket i */
	}
	return 2ull << (UPAGER_HIST_BUCKETS - 1);
}

const char *upager_strerror(int err)
{
	if (err == INT_MIN)
		return "unknown error";
	if (err < 0)
		err = -err;
	switch (err) {
	case 0:
		return "success";
	case EINVAL:
		return "invalid argument";
	case ENOMEM:
		return "out of memory";
	case ENOENT:
		return "no such file or directory";
	case EOPNOTSUPP:
		return "the kernel lacks a userfaultfd feature upager needs";
	case EPERM:
		return "userfaultfd not permitted (root, CAP_SYS_PTRACE, "
		       "/dev/userfaultfd or vm.unprivileged_userfaultfd=1 needed)";
	case ENOSYS:
		return "userfaultfd or io_uring not available in this kernel";
	case ECANCELED:
		return "operation cancelled: the region or runtime is going away";
	case EIO:
		return "input/output error from the store";
	default: {
		const char *d = strerrordesc_np(err);
		return d ? d : "unknown error";
	}
	}
}

const char *upager_version(void)
{
	return UPAGER_VERSION_STRING;
}
