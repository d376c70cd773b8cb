/*
 * size.c - cli_parse_size(), the byte-size syntax described in size.h.
 *
 * Written out by hand rather than on top of strtoull(): strtoull() skips
 * leading blanks, accepts a sign ("-1" comes back as UINT64_MAX) and, with
 * base 0, reads "010" as octal, none of which a size argument should do.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>

#include "size.h"

/* ASCII only: a size must not change meaning with the locale. */
static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* log2 of the multiple unit letter @c stands for, or -1 if it is none. */
static int unit_shift(char c)
{
	switch (lower(c)) {
	case 'k': return 10;
	case 'm': return 20;
	case 'g': return 30;
	case 't': return 40;
	default: return -1;
	}
}

/*
 * Parses the unit at @s, which must end the string. Returns the shift to
 * apply (0 for no unit or a bare "B"), or -1 if @s is not a unit.
 */
static int parse_unit(const char *s)
{
	int shift = unit_shift(*s);

	if (shift >= 0) {
		s++;
		if (lower(s[0]) == 'i' && lower(s[1]) == 'b')
			s++;	/* "KiB": its 'b' is taken below */
	} else {
		shift = 0;
	}
	if (lower(*s) == 'b')
		s++;
	return *s ? -1 : shift;
}

int cli_parse_size(const char *s, uint64_t *out)
{
	const char *p;
	uint64_t v = 0;
	bool big = false;
	int shift;

	if (!s)
		return -EINVAL;
	for (p = s; *p >= '0' && *p <= '9'; p++) {
		unsigned d = (unsigned)(*p - '0');

		/*
		 * Keep reading digits past an overflow, so that a malformed
		 * string is reported as such, not as out of range.
		 */
		if (v > (UINT64_MAX - d) / 10)
			big = true;
		else
			v = v * 10 + d;
	}
	if (p == s)
		return -EINVAL;
	shift = parse_unit(p);
	if (shift < 0)
		return -EINVAL;
	if (big || v > UINT64_MAX >> shift)
		return -ERANGE;
	*out = v << shift;
	return 0;
}
