#!/bin/bash
# ASan probe loop in dom0: loopback + exchange with the domU, N times.
P=$1; N=$2
ok=0; bad=0
for i in $(seq $N); do
  if "$P" > /tmp/l.$i 2>&1 && "$P" --peer "$HMX_XEN_LAB_DOMU_ID" --timeout 60 > /tmp/p.$i 2>&1; then ok=$((ok+1)); else bad=$((bad+1)); echo "dom0 iteration $i failed"; tail -30 /tmp/l.$i /tmp/p.$i; fi
  grep -l "AddressSanitizer\|ThreadSanitizer" /tmp/l.$i /tmp/p.$i && cat /tmp/l.$i /tmp/p.$i
done
echo "ASAN-LOOP dom0: $ok ok, $bad failed of $N"
[ $bad = 0 ]
