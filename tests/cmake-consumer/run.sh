#!/usr/bin/env bash
# run.sh - the "install" test: install a build tree into a fresh prefix and
# build + run tests/cmake-consumer against it through find_package(upager)
# (shared and static targets) and through pkg-config.
#
# usage: run.sh <build-dir> <work-dir>
# environment (set by tests/consumer.cmake):
#   UPAGER_CMAKE        cmake to use (default: cmake)
#   UPAGER_CC           C compiler for the consumer
#   UPAGER_CFLAGS       extra C flags (sanitizers must match the library's)
#   UPAGER_LDFLAGS      extra link flags
# exit: 0 pass, 1 fail, 77 skipped (userfaultfd unavailable: the packaging
# checks passed but no runtime could be created).
set -euo pipefail

build=${1:?usage: run.sh <build-dir> <work-dir>}
work=${2:?usage: run.sh <build-dir> <work-dir>}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cmake=${UPAGER_CMAKE:-cmake}

fail() { echo "install-test: FAIL: $*" >&2; echo "install-test: files kept in $work" >&2; exit 1; }

# Runs a command with its output in a log file; prints the log on failure.
step() {
	local log=$1; shift
	if ! "$@" >"$log" 2>&1; then
		echo "install-test: command failed: $*" >&2
		cat "$log" >&2
		fail "see above"
	fi
}

rm -rf "$work"
mkdir -p "$work"
prefix="$work/prefix"

echo "install-test: cmake --install $build --prefix $prefix"
step "$work/install.log" "$cmake" --install "$build" --prefix "$prefix"

# The files a consumer relies on must all be there.
[[ -f $prefix/include/upager.h ]] || fail "include/upager.h not installed"
config=$(find "$prefix" -name upagerConfig.cmake -print -quit)
[[ -n $config ]] || fail "upagerConfig.cmake not installed"
for f in upagerConfigVersion.cmake upagerTargets.cmake upagerStaticTargets.cmake; do
	[[ -f $(dirname "$config")/$f ]] || fail "$f not installed next to $config"
done
pc=$(find "$prefix" -name upager.pc -print -quit)
[[ -n $pc ]] || fail "upager.pc not installed"
libdir=$(dirname "$(dirname "$pc")")
for f in libupager.so libupager.a; do
	[[ -e $libdir/$f ]] || fail "$f not installed in $libdir"
done
echo "install-test: installed files OK (libdir $libdir)"

# upager.pc must name the prefix it was installed under and its private
# dependencies (a static link needs them).
export PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
got_prefix=$(pkg-config --variable=prefix upager)
[[ $(realpath "$got_prefix") == $(realpath "$prefix") ]] ||
	fail "upager.pc prefix is '$got_prefix', expected '$prefix'"
requires=$(pkg-config --print-requires-private upager)
grep -q '^liburing' <<<"$requires" || fail "upager.pc: Requires.private lacks liburing"
grep -q '^liblz4' <<<"$requires" || fail "upager.pc: Requires.private lacks liblz4"
static_libs=$(pkg-config --static --libs upager)
for l in -lupager -luring -llz4; do
	grep -qw -- "$l" <<<"$static_libs" || fail "pkg-config --static --libs lacks $l: $static_libs"
done
echo "install-test: upager.pc OK ($(pkg-config --modversion upager))"

skipped=0
for mode in package package-static pkg-config; do
	bdir="$work/build-$mode"
	args=(-S "$here" -B "$bdir" -DCONSUME="$mode"
	      -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=RelWithDebInfo)
	[[ -n ${UPAGER_CC:-} ]] && args+=(-DCMAKE_C_COMPILER="$UPAGER_CC")
	[[ -n ${UPAGER_CFLAGS:-} ]] && args+=(-DCMAKE_C_FLAGS="$UPAGER_CFLAGS")
	[[ -n ${UPAGER_LDFLAGS:-} ]] && args+=(-DCMAKE_EXE_LINKER_FLAGS="$UPAGER_LDFLAGS")
	step "$bdir.configure.log" "$cmake" "${args[@]}"
	step "$bdir.build.log" "$cmake" --build "$bdir"
	rc=0
	"$bdir/consumer" "$prefix" >"$bdir.run.log" 2>&1 || rc=$?
	sed "s/^/    /" "$bdir.run.log"
	case $rc in
	0) echo "install-test: consumer via $mode: OK" ;;
	77) echo "install-test: consumer via $mode: OK, runtime part skipped"; skipped=1 ;;
	*) fail "consumer via $mode exited with $rc" ;;
	esac
done

rm -rf "$work"
if ((skipped)); then
	echo "install-test: SKIP: packaging OK, but userfaultfd is not available to create a runtime"
	exit 77
fi
echo "install-test: PASS"
