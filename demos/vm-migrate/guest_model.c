/*
 * guest_model.c - guest RAM set-up, and the guest program (guest.S)
 * rewritten in C: as a checksum model, and as the plain-process workload.
 *
 * The arithmetic here must match guest.S exactly: 32-bit wrap-around,
 * the same LCG, the same rotations. vm-migrate --mode none checks the
 * model against a real guest run.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "guest.h"

static uint32_t rol32(uint32_t v, unsigned r)
{
	return (v << r) | (v >> (32 - r));
}

static uint32_t fill_value(uint32_t i, uint32_t seed)
{
	return (i * 0x9E3779B1u) ^ seed;
}

static uint32_t lcg_next(uint32_t x)
{
	return x * 1664525u + 1013904223u;
}

struct guest_params *guest_params_of(void *ram, int i)
{
	return (struct guest_params *)((char *)ram + GUEST_PARAMS_GPA) + i;
}

int guest_setup(void *ram, size_t ram_size, int nvcpus, unsigned hot_div,
		unsigned pages_per_unit)
{
	if (nvcpus < 1 || nvcpus > GUEST_MAX_VCPUS || !hot_div ||
	    ram_size < GUEST_DATA_GPA + (size_t)nvcpus * 16 * GUEST_PAGE ||
	    ram_size > (3ull << 30))
		return -EINVAL;
	/* Identity map of the low 4 GiB with 2 MiB pages for long mode. */
	uint64_t *pml4 = (uint64_t *)((char *)ram + GUEST_PT_GPA);
	uint64_t *pdpt = pml4 + 512;
	uint64_t *pd = pdpt + 512;
	memset(pml4, 0, 6 * GUEST_PAGE);
	pml4[0] = (GUEST_PT_GPA + GUEST_PAGE) | 7;
	for (uint64_t i = 0; i < 4; i++)
		pdpt[i] = (GUEST_PT_GPA + (2 + i) * GUEST_PAGE) | 7;
	for (uint64_t i = 0; i < 4 * 512; i++)
		pd[i] = (i << 21) | 0x87; /* present, writable, 2 MiB */
	size_t code = (size_t)(vmg_guest_end - vmg_guest_start);
	memcpy((char *)ram + GUEST_CODE_GPA, vmg_guest_start, code);
	uint32_t data_pages = (uint32_t)((ram_size - GUEST_DATA_GPA) / GUEST_PAGE);
	uint32_t slice = data_pages / (uint32_t)nvcpus;
	uint32_t hot = 1;
	while (hot * 2 <= slice / hot_div)
		hot *= 2;
	for (int i = 0; i < nvcpus; i++) {
		struct guest_params *p = guest_params_of(ram, i);
		memset(p, 0, sizeof(*p));
		p->base = GUEST_DATA_GPA + (uint32_t)i * slice * GUEST_PAGE;
		p->npages = slice;
		p->hot_start = slice / 2 - hot / 2;
		p->hot_mask = hot - 1;
		p->pages_per_unit = pages_per_unit;
		p->seed = 0x5eed0000u + (uint32_t)i * 0x01010101u;
	}
	return 0;
}

/* One work unit on the words of page @pg (host pointer): shared by the
 * model and the workload. */
static uint32_t touch_page(uint32_t *pg, uint32_t units, uint32_t sum)
{
	for (unsigned k = 0; k < 1024; k += 64) {
		uint32_t v = rol32(pg[k] + units, 3);
		pg[k] = v;
		sum = rol32(sum, 5) + v;
	}
	return sum;
}

uint32_t guest_model_checksum(const struct guest_params *p, uint32_t units)
{
	uint32_t hot = p->hot_mask + 1;
	uint32_t *h = malloc((size_t)hot * GUEST_PAGE);
	if (!h)
		abort();
	for (uint32_t i = 0; i < hot * 1024u; i++)
		h[i] = fill_value(p->hot_start * 1024u + i, p->seed);
	uint32_t x = p->seed, sum = 0;
	for (uint32_t u = 0; u < units; u++) {
		for (uint32_t j = 0; j < p->pages_per_unit; j++) {
			x = lcg_next(x);
			uint32_t pg = (x >> 8) & p->hot_mask;
			sum = touch_page(h + (size_t)pg * 1024, u, sum);
		}
	}
	for (uint32_t pg = 0; pg < p->npages; pg++) {
		bool in_hot = pg >= p->hot_start && pg - p->hot_start < hot;
		for (uint32_t k = 0; k < 1024; k++) {
			uint32_t v = in_hot ?
				h[(size_t)(pg - p->hot_start) * 1024 + k] :
				fill_value(pg * 1024u + k, p->seed);
			sum = rol32(sum, 5) + v;
		}
	}
	free(h);
	return sum;
}

/* ---- the process workload ---- */

static void mark(_Atomic uint64_t *dirty, size_t page)
{
	if (dirty)
		atomic_fetch_or_explicit(&dirty[page / 64], 1ull << (page % 64),
					 memory_order_relaxed);
}

static void pw_fill(char *ram, struct guest_params *p, _Atomic uint64_t *dirty)
{
	uint32_t *w = (uint32_t *)(ram + p->base);
	for (uint32_t i = 0; i < p->npages * 1024u; i++)
		w[i] = fill_value(i, p->seed);
	for (uint32_t pg = 0; pg < p->npages; pg++)
		mark(dirty, p->base / GUEST_PAGE + pg);
	p->lcg = p->seed;
}

static uint32_t pw_scan(char *ram, const struct guest_params *p, uint32_t sum)
{
	const uint32_t *w = (const uint32_t *)(ram + p->base);
	for (size_t i = 0; i < (size_t)p->npages * 1024; i++)
		sum = rol32(sum, 5) + w[i];
	return sum;
}

void pw_run(void *ram_, int i, struct pw_state *st, atomic_bool *stop,
	    _Atomic uint64_t *dirty, const struct pw_hooks *h)
{
	char *ram = ram_;
	struct guest_params *p = guest_params_of(ram, i);
	size_t pidx = GUEST_PARAMS_GPA / GUEST_PAGE;
	if (st->phase == PW_FILL) {
		pw_fill(ram, p, dirty);
		mark(dirty, pidx);
		st->phase = PW_WORK;
		st->units = 0;
		st->sum = 0;
		h->filled(h->arg, i);
	}
	while (st->phase == PW_WORK && !atomic_load(stop)) {
		uint32_t stop_at = __atomic_load_n(&p->stop_units, __ATOMIC_ACQUIRE);
		if (stop_at && st->units >= stop_at) {
			st->sum = pw_scan(ram, p, st->sum);
			st->phase = PW_DONE;
			h->finished(h->arg, i, st->units, st->sum);
			return;
		}
		for (uint32_t j = 0; j < p->pages_per_unit; j++) {
			p->lcg = lcg_next(p->lcg);
			uint32_t pg = p->hot_start + ((p->lcg >> 8) & p->hot_mask);
			uint32_t *w = (uint32_t *)(ram + p->base) + (size_t)pg * 1024;
			st->sum = touch_page(w, st->units, st->sum);
			mark(dirty, p->base / GUEST_PAGE + pg);
		}
		mark(dirty, pidx);
		st->units++;
		h->progress(h->arg, i, st->units);
	}
}
