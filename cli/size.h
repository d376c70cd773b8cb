/*
 * size.h - byte sizes on the command lines of the programs in bench/ and
 * demos/ (not part of libupager, never installed).
 *
 * One syntax for all of them:
 *
 *	SIZE := DIGITS [ UNIT ]
 *	UNIT := ( "K" | "M" | "G" | "T" ) [ "iB" | "B" ]  |  "B"
 *
 * DIGITS is a decimal integer (no sign, no blanks, no 0x: a leading 0 does
 * not mean octal). K, M, G and T are powers of 1024, whichever spelling is
 * used: 4K, 4KB and 4KiB are all 4096 bytes. Letters are case-insensitive.
 * Examples: 0, 4096, 4096B, 64k, 2M, 1GiB, 1tb.
 */
#ifndef UPAGER_CLI_SIZE_H
#define UPAGER_CLI_SIZE_H

#include <stdint.h>

/*
 * Parses @s as a SIZE into *@out. Returns 0, -EINVAL if @s is not a SIZE
 * (empty, a sign, an unknown unit, anything after the unit) or -ERANGE if
 * its value does not fit in 64 bits. On error *@out is left as it was.
 */
int cli_parse_size(const char *s, uint64_t *out);

#endif
