P=$1; N=$2
ok=0; bad=0
i=0
while [ $i -lt $N ]; do
  i=$((i+1))
  if "$P" --peer 0 --timeout 60 > /tmp/p.$i 2>&1; then ok=$((ok+1)); else bad=$((bad+1)); echo "domU iteration $i failed"; tail -30 /tmp/p.$i; fi
  grep -q "Sanitizer" /tmp/p.$i && cat /tmp/p.$i
done
echo "ASAN-LOOP domU: $ok ok, $bad failed of $N"
[ $bad = 0 ]
