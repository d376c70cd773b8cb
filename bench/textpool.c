/*
 * textpool.c - text-like pages for the budget benchmark and the compressed
 * demo (textpool.h).
 */
#include "textpool.h"

#include <stdlib.h>
#include <string.h>

uint64_t textpool_rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

uint64_t textpool_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

uint8_t *textpool_make(unsigned npages, uint64_t seed)
{
	static const char *syl[] = {
		"ka", "lo", "mer", "tin", "sa", "do", "re", "vi", "nu", "pal",
		"os", "ter", "un", "ba", "ci", "gro", "fe", "ly", "qua", "zen",
		"ith", "mon", "ra", "pe", "dus", "ol", "ve", "hi", "strat", "em",
	};
	enum { NSYL = sizeof(syl) / sizeof(syl[0]), NWORDS = 96 };
	char words[NWORDS][24];
	uint64_t s = seed;
	for (unsigned w = 0; w < NWORDS; w++) {
		unsigned n = 1 + (unsigned)(textpool_rnd(&s) % 4);
		words[w][0] = 0;
		for (unsigned k = 0; k < n; k++)
			strcat(words[w], syl[textpool_rnd(&s) % NSYL]);
	}
	size_t i = 0, len = (size_t)npages * TEXTPOOL_PAGE;
	uint8_t *pool = malloc(len);
	if (!pool)
		return NULL;
	while (i < len) {
		/* Skewed: small word numbers are much more frequent. */
		uint64_t w = textpool_rnd(&s) % NWORDS;
		for (int k = 0; k < 2; k++)
			w = w * (textpool_rnd(&s) % NWORDS) / NWORDS;
		for (const char *p = words[w]; *p && i < len; p++)
			pool[i++] = (uint8_t)*p;
		if (i < len)
			pool[i++] = textpool_rnd(&s) % 12 ? ' ' :
				    (textpool_rnd(&s) % 3 ? '\n' : '.');
	}
	return pool;
}
