#!/bin/bash
# usage: run.sh PYTHON TAG
PY=$1; TAG=$2; OUT=/work/notes/python-verify/$TAG
rm -f $OUT.*.json
$PY /work/notes/python-verify/target.py $OUT & PID=$!
for i in $(seq 50); do [ -f $OUT.main.json ] && [ -f $OUT.worker.json ] && break; sleep 0.1; done
sleep 0.3
gdb -p $PID -batch -ex 'info threads' -ex 'thread apply all p _Py_tss_tstate' 2>&1 | grep -E 'Thread 0x|^\$|No symbol' > $OUT.gdb
cat $OUT.gdb
for t in $(ls /proc/$PID/task); do
  fs=$(grep -m1 -oE "Thread 0x[0-9a-f]+ \(LWP $t\)" $OUT.gdb | awk '{print $2}')
  echo "--- tid $t fs_base $fs"
  /usr/bin/python3 /work/notes/python-verify/reader.py $PID $t $fs
done
python3 /work/notes/python-verify/compare.py $OUT $PID
kill $PID
