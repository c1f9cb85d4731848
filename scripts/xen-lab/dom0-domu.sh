# SPDX-License-Identifier: Apache-2.0
# Sourced into dom0.sh by `run --domu`: starts the Xen toolstack in dom0 (from the
# host's xen-utils-4.17, in the read-only chroot), creates the PV domU, exports
# HMX_XEN_LAB_DOMU_ID; hmx_domu_finish waits for the domU (bounded), prints its
# console and folds its exit status into $rc.
X=/usr/lib/xen-4.17/bin
[ -x $X/xenconsoled ] || { echo "HMX-LAB-ERROR: xen-utils-4.17 missing in the host root"; exit 97; }
mkdir -p /run/xen /run/xenstored /run/lock /var/log/xen/console
XENSTORED_ROOTDIR=/run/xenstored $X/oxenstored --pid-file /run/xenstore.pid \
    || { echo "HMX-LAB-ERROR: xenstored failed"; exit 97; }
n=0
until xenstore-read -s / >/dev/null 2>&1; do
    n=$((n + 1)); [ $n -le 100 ] || { echo "HMX-LAB-ERROR: xenstored did not answer in 10 s"; exit 97; }
    sleep 0.1
done
$X/xen-init-dom0 >/dev/null || { echo "HMX-LAB-ERROR: xen-init-dom0 failed"; exit 97; }
$X/xenconsoled --pid-file /run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console \
    || { echo "HMX-LAB-ERROR: xenconsoled failed"; exit 97; }
echo "[lab] toolstack up at uptime $(cut -d' ' -f1 /proc/uptime)"
xl create -q /run/hmx-lab/domu.cfg || { echo "HMX-LAB-ERROR: xl create failed"; exit 97; }
HMX_XEN_LAB_DOMU_ID=$(xl domid hmx-domu) || { echo "HMX-LAB-ERROR: xl domid failed"; exit 97; }
export HMX_XEN_LAB_DOMU_ID
echo "[lab] domU hmx-domu is domain $HMX_XEN_LAB_DOMU_ID (created at uptime $(cut -d' ' -f1 /proc/uptime))"

hmx_domu_finish() {
    n=0
    while xl domid hmx-domu >/dev/null 2>&1; do
        n=$((n + 1))
        if [ $n -gt 300 ]; then
            echo "[lab] domU still running after 60 s: destroying it"
            xl destroy hmx-domu
            break
        fi
        sleep 0.2
    done
    log=/var/log/xen/console/guest-hmx-domu.log
    echo "----- domU console -----"
    cat "$log" 2>/dev/null | tr -d '\r'
    echo "----- end of domU console -----"
    if ! tr -d '\r' < "$log" 2>/dev/null | grep -q 'HMX-DOMU-UP'; then
        # Its kernel died or hung before /init: nothing of the product ran in the domU.
        echo "[lab] HMX-LAB-DOMU-NO-INIT: the domU never reached its init; Xen says: $(xl dmesg | grep -E 'd[0-9]+v[0-9]+ Triple fault' | tail -1)"
    fi
    domu_rc=$(tr -d '\r' < "$log" 2>/dev/null | sed -n 's/^HMX-DOMU-EXIT=\([0-9]*\).*/\1/p' | tail -1)
    if [ -z "$domu_rc" ]; then
        echo "[lab] the domU reported no exit status"
        domu_rc=97
    fi
    echo "[lab] domU exit status: $domu_rc"
    [ "$rc" != 0 ] || rc=$domu_rc
}
