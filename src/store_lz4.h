/*
 * store_lz4.h - internal hooks of the lz4 store (store_lz4.c) for tests.
 * Not installed; the symbols are hidden, so only programs linked to
 * upager_static can use them.
 */
#ifndef UPAGER_STORE_LZ4_H
#define UPAGER_STORE_LZ4_H

#include <stdint.h>

#include "upager.h"

/* Damages the stored bytes of block @block (block number, offset /
 * block_size) of lz4 store @s, as a memory error would: the next read of
 * the block fails its check (-EIO when the store is alone; stacked, the
 * block is fetched from the lower store again). Thread-safe.
 * @return 0, -EINVAL (@s is not an lz4 store), -ENOENT (the block is not
 *         held, or is held as all zeros, which has no stored bytes). */
int upager__lz4_corrupt(upager_store_t *s, uint64_t block)
	__attribute__((visibility("hidden")));

#endif /* UPAGER_STORE_LZ4_H */
