#!/bin/bash
# One background lane over a run list: runs the first unfinished, unclaimed item of
# RUNS/plan.txt, then the next, until ten minutes before END (epoch seconds). Start one
# lane per core; they share the list through a lock.
#
#   python -m benchmarks.returns plan --runs RUNS --python "PYTHONPATH=... python" > RUNS/plan.txt
#   nohup benchmarks/lane.sh RUNS $(date -d "+170 min" +%s) >/dev/null 2>&1 &
#
# Items are "NAME | COMMAND" lines ('#' starts a comment). COMMAND runs from RUNS with its
# output appended to RUNS/NAME.log; the item is finished once it exits 0 (RUNS/NAME/.done);
# one that exits otherwise is set aside (RUNS/NAME.failed: read its log, delete the file to retry).
# A killed training run resumes from its last checkpoint when a lane starts it again; an
# SB3 run (NAME contains -sb3-) cannot, so it starts only with MIN_SB3 minutes (default
# 100) left. RUNS/lanes.log records each start and end.
RUNS=$1
END=$2
MIN_SB3=${MIN_SB3:-100}
cd "$RUNS" || exit 1
while :; do
  left=$(( (END - $(date +%s)) / 60 ))
  if [ $left -lt 10 ]; then echo "$(date -u +%FT%T) lane $$ stops: $left min left" >> lanes.log; exit 0; fi
  exec 9> plan.lock
  flock 9
  pick=""
  while IFS= read -r line; do
    [[ -z "$line" || $line == \#* ]] && continue
    name=$(echo "${line%%|*}" | xargs)
    [ -e "$name/.done" ] || [ -e "$name.failed" ] && continue
    [ -e "$name.lock" ] && kill -0 "$(cat "$name.lock")" 2>/dev/null && continue
    [[ $name == *-sb3-* && $left -lt $MIN_SB3 ]] && continue
    pick=$line
    break
  done < plan.txt
  if [ -z "$pick" ]; then
    flock -u 9
    echo "$(date -u +%FT%T) lane $$ stops: nothing left to run" >> lanes.log
    exit 0
  fi
  echo $$ > "$name.lock"
  flock -u 9
  echo "$(date -u +%FT%T) lane $$ starts $name" >> lanes.log
  bash -c "${pick#*|}" >> "$name.log" 2>&1
  rc=$?
  # killed by a signal (the session ended): neither finished nor failed, resumed later
  if [ $rc -eq 0 ]; then mkdir -p "$name" && touch "$name/.done"; elif [ $rc -lt 128 ]; then touch "$name.failed"; fi
  echo "$(date -u +%FT%T) lane $$ ends $name rc=$rc" >> lanes.log
  rm -f "$name.lock"
done
