# SPDX-License-Identifier: Apache-2.0
# Shared helpers of the Xen lab scripts. Sourced, never executed.
#
# Exit status convention of every lab script: a failure of the lab itself (packages,
# build, boot, missing markers) exits with HMX_LAB_FAILURE (97) after printing
# "xen-lab: FATAL: <reason>" on stderr. It is never a skip.

HMX_LAB_FAILURE=97
HMX_LAB_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HMX_LAB_CACHE=${HMX_XEN_LAB_CACHE:-/var/cache/hmx-xen-lab}
HMX_LAB_T0=${HMX_LAB_T0:-$(date +%s.%N)}
export HMX_LAB_T0

hmx_elapsed() {
    awk -v t0="$HMX_LAB_T0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%6.1fs", t1 - t0 }'
}

hmx_log() {
    printf 'xen-lab [%s] %s\n' "$(hmx_elapsed)" "$*" >&2
}

hmx_die() {
    printf 'xen-lab: FATAL: %s\n' "$*" >&2
    exit "$HMX_LAB_FAILURE"
}

hmx_need_root() {
    [ "$(id -u)" = 0 ] || hmx_die "must run as root (apt-get, cache in $HMX_LAB_CACHE)"
}

# Runs "$@" and logs how long it took: hmx_timed LABEL CMD...
hmx_timed() {
    local label=$1; shift
    local start end
    start=$(date +%s.%N)
    "$@"
    local rc=$?
    end=$(date +%s.%N)
    hmx_log "$(awk -v a="$start" -v b="$end" -v l="$label" 'BEGIN { printf "%s took %.1fs", l, b - a }')"
    return $rc
}

# The kernel image package that linux-image-amd64 currently points to
# (e.g. linux-image-6.1.0-56-amd64). The cloud flavour has no CONFIG_XEN_DOM0.
hmx_kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
