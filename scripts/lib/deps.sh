# deps.sh - Debian packages upager needs to build, test and plot; sourced
# by scripts/quickstart and scripts/test.
#
# upager_ensure_deps: installs what is missing when run as root (apt-get
# update and install only when something is missing); otherwise lists the
# missing packages and returns 1.

UPAGER_DEPS=(build-essential cmake pkg-config liburing-dev liblz4-dev
	libcmocka-dev gnuplot-nox)

# Prints the packages of UPAGER_DEPS that are not installed.
upager_missing_deps() {
	local pkg status
	for pkg in "${UPAGER_DEPS[@]}"; do
		status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
		[[ $status == installed ]] || echo "$pkg"
	done
}

upager_ensure_deps() {
	local missing
	if ! command -v dpkg-query >/dev/null 2>&1; then
		echo "deps: not a Debian system; make sure these (or their equivalents) are installed:"
		echo "deps:   ${UPAGER_DEPS[*]}"
		return 0
	fi
	mapfile -t missing < <(upager_missing_deps)
	if ((${#missing[@]} == 0)); then
		echo "deps: all packages present (${UPAGER_DEPS[*]})"
		return 0
	fi
	if ((EUID != 0)); then
		echo "deps: missing Debian packages: ${missing[*]}" >&2
		echo "deps: run this script as root (e.g. with sudo) to install them, or install them yourself:" >&2
		echo "deps:   sudo apt-get install --no-install-recommends ${missing[*]}" >&2
		return 1
	fi
	echo "deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y --no-install-recommends "${missing[@]}"
	mapfile -t missing < <(upager_missing_deps)
	if ((${#missing[@]} != 0)); then
		echo "deps: still missing after apt-get install: ${missing[*]}" >&2
		return 1
	fi
}
