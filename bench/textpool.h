/*
 * textpool.h - text-like pages shared by upager-budget-bench and
 * upager-compressed-demo: pseudo-words made of syllables, frequent words
 * much more frequent than rare ones, as in prose (lz4 gets about 2.4x on
 * them). Deterministic for a given seed.
 */
#ifndef UPAGER_TEXTPOOL_H
#define UPAGER_TEXTPOOL_H

#include <stdint.h>

#define TEXTPOOL_PAGE 4096u

/* xorshift64*: the next number of the stream in *s (never 0). */
uint64_t textpool_rnd(uint64_t *s);
/* splitmix64's finaliser: a well-mixed function of x. */
uint64_t textpool_mix64(uint64_t x);
/* @npages pages of text from @seed, malloc'ed; NULL when out of memory. */
uint8_t *textpool_make(unsigned npages, uint64_t seed);

#endif
