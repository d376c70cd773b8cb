/*
 * budget_lz4.c - upager-budget-bench's compressed comparison: an anonymous
 * region on an lz4 store, budget-limited, against anonymous memory in a v1
 * memory cgroup swapping to zram (lz4). The phases each side runs, and the
 * comparison's rows.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "budget_bench.h"
#include "kernel_env.h"

/* The compressed comparison's phases on one side: fill, scan, then
 * (unless @no_random) random touches. The scan comes first so that every
 * side scans the same bytes. */
void lz4_workload(uint8_t *base, size_t len, const struct side_ops *so,
		  struct result *r, bool no_random)
{
	so->hint(so->ctx, base, len, true);
	phase_fill(base, len, &r->ph[PH_FILL]);
	phase_scan(base, len, &r->ph[PH_SEQ]);
	if (no_random)
		return;
	so->hint(so->ctx, base, len, false);
	phase_random(base, len, O.ops, 10, 0x5eed, &r->ph[PH_RAND]);
}

static void note_upager_lz4(const char *what, const struct result *u)
{
	note("upager side (%s): lz4 held %" PRIu64 " MiB of data in %" PRIu64
	     " MiB (ratio %.2f), allocator %" PRIu64 " MiB; faults %" PRIu64
	     " (p50 %" PRIu64 " us, p99 %" PRIu64 " us), prefetched %"
	     PRIu64 ", evictions %" PRIu64 ", write-backs %" PRIu64
	     " (%" PRIu64 " found unchanged by the store)"
	     ", max resident seen %" PRIu64 " MiB, peak RSS %ld MiB",
	     what, u->lz.bytes_logical >> 20, u->lz.bytes_stored >> 20,
	     u->lz.ratio, u->lz.bytes_allocated >> 20, u->st.faults,
	     upager_stats_percentile(&u->st, 50),
	     upager_stats_percentile(&u->st, 99),
	     u->st.prefetched, u->st.evictions, u->st.writebacks,
	     u->lz.unchanged,
	     u->max_resident_seen >> 20, u->peak_rss_kib >> 10);
}

/* Runs the upager side of the compressed comparison with install unit
 * @page; reports a failure. */
static bool upager_lz4_run(size_t page, bool no_random, struct result *u)
{
	struct up_args ua = { .lz4 = true, .page = page,
			      .no_random = no_random, .budget = O.budget };
	bool ok = run_child(upager_side, &ua, u);
	if (!ok) {
		note("upager side (unit %zu KiB) failed: %s", page >> 10,
		     u->err);
		any_failed = true;
	}
	return ok;
}

static bool kernel_lz4_run(struct result *k, char *why, size_t wl)
{
	if (!kernel_possible(why, wl))
		return false;
	const char *cg = cg_create(0, O.budget, why, wl);
	bool ok = cg && zram_setup(O.size * 2, why, wl);
	if (ok) {
		note("kernel side: v1 memory cgroup %s (limit %" PRIu64
		     " MiB), swap on /dev/zram%d (lz4, disksize %" PRIu64
		     " MiB), set up by this program and removed at exit", cg,
		     O.budget >> 20, zram_id, (O.size * 2) >> 20);
		struct k_args ka = { .lz4 = true, .cg = cg };
		ok = run_child(kernel_side, &ka, k);
		if (!ok) {
			snprintf(why, wl, "kernel side failed: %s", k->err);
			any_failed = true;
		} else {
			char p[300];
			snprintf(p, sizeof(p), "%s/memory.max_usage_in_bytes",
				 cg);
			note("kernel side: cgroup peak usage %" PRIu64
			     " MiB, zram held %" PRIu64 " MiB of data in %"
			     PRIu64 " MiB (ratio %.2f), %" PRIu64
			     " MiB of memory, peak RSS %ld MiB",
			     read_u64(p) >> 20, k->zram_orig >> 20,
			     k->zram_compr >> 20,
			     k->zram_compr ? (double)k->zram_orig /
					     (double)k->zram_compr : 0,
			     k->zram_used >> 20, k->peak_rss_kib >> 10);
		}
	}
	zram_teardown();
	cg_remove(0);
	return ok;
}

/* Upager runs twice: with 4 KiB units (fill, scan, random touches) and
 * with --seq-page units (fill and scan only): an application picks the
 * unit per region, the kernel cannot. Both are reported. */
void compare_lz4(void)
{
	char why[256] = "", wr[48], ws[48], ws4[48], wf[48], wf4[48];
	struct result u, us, k;
	memset(&k, 0, sizeof(k));
	memset(&us, 0, sizeof(us));
	note("== compressed memory: %" PRIu64 " MiB of data, budget %" PRIu64
	     " MiB; upager lz4 store alone (units %zu KiB and %zu KiB, "
	     "readahead %zu KiB) vs kernel anon memory + zram lz4 swap",
	     O.size >> 20, O.budget >> 20, O.page >> 10, O.seq_page >> 10,
	     O.readahead >> 10);

	bool u_ok = upager_lz4_run(O.page, false, &u);
	bool s_ok = O.seq_page != O.page &&
		    upager_lz4_run(O.seq_page, true, &us);
	bool k_ok = kernel_lz4_run(&k, why, sizeof(why));
	if (!k_ok)
		note("%s", why);
	if (u_ok)
		note_upager_lz4("random-access unit", &u);
	if (s_ok)
		note_upager_lz4("sequential unit", &us);
	if (u_ok && k_ok)
		check_sums("compressed", &u, &k);
	if (s_ok && k_ok)
		check_sums("compressed, sequential unit", &us, &k);

	/* No commas: the names are csv fields too. */
	snprintf(wr, sizeof(wr), "random 4K touch (%zuK unit)", O.page >> 10);
	snprintf(ws, sizeof(ws), "seq scan (%zuK unit)", O.seq_page >> 10);
	snprintf(ws4, sizeof(ws4), "seq scan (%zuK unit)", O.page >> 10);
	snprintf(wf, sizeof(wf), "seq fill (%zuK unit)", O.seq_page >> 10);
	snprintf(wf4, sizeof(wf4), "seq fill (%zuK unit)", O.page >> 10);
	if (u_ok)
		row("compressed", wr, "pages/s", &u.ph[PH_RAND],
		    &k.ph[PH_RAND], k_ok, NULL);
	if (s_ok) {
		row("compressed", ws, "MB/s", &us.ph[PH_SEQ], &k.ph[PH_SEQ],
		    k_ok, NULL);
		row("compressed", wf, "MB/s", &us.ph[PH_FILL],
		    &k.ph[PH_FILL], k_ok, NULL);
	}
	if (u_ok) {
		row("compressed", ws4, "MB/s", &u.ph[PH_SEQ], &k.ph[PH_SEQ],
		    k_ok, NULL);
		row("compressed", wf4, "MB/s", &u.ph[PH_FILL],
		    &k.ph[PH_FILL], k_ok, NULL);
	}
	if (!O.csv)
		printf("\n");
}
