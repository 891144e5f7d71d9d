#!/usr/bin/env bash
# Rows of benchmarks/deeppcb_kd.sh side by side: LANES processes share one GPU (a yolov5n row leaves an H100
# mostly idle; the data loader is the limit), each taking the next row of one queue.
#
#   PROTOCOL=gpu bash benchmarks/deeppcb_lanes.sh           # 4 lanes, nproc / 4 - 1 loader workers each
#   PROTOCOL=gpu LANES=4 WORKERS=3 TEACHER=runs/t/teacher.pt bash benchmarks/deeppcb_lanes.sh  # session 9's run
#   DRY_RUN=1 ... prints the queue and each row's command only.
#
# Queue, most wanted first: the teacher, the baselines, the issue-16 KD rows (defaults first), then the
# issue-14 rows (QUEUE_16, QUEUE_14: rows as deeppcb_kd.sh names them). A row that needs the teacher waits
# until its weights file exists (and is dropped if the teacher row failed). Each row is one deeppcb_kd.sh
# call with ISSUE and ROW set, so its command, folder and skip/resume rules are that script's; every other
# setting (PROTOCOL, EPOCHS, WORKERS, EXTRA, TEACHER, ...) passes through the environment. Lane output:
# <STATE>/lane<k>.log. At the end, the tables of both issues (COMPARE_ONLY=1).
# The teacher file a row waits for is the one its own command reads (deeppcb_kd.sh NEEDS_ONLY=1); a failed
# teacher row drops every row still waiting.
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LANES="${LANES:-4}"
[[ "$LANES" =~ ^[1-9][0-9]*$ ]] || { echo "deeppcb_lanes.sh: error: LANES must be a positive integer, got '$LANES'" >&2; exit 2; }
export PROTOCOL="${PROTOCOL:-gpu}"
export TEACHER="${TEACHER:-weights/deeppcb_teacher_yolov5s_$PROTOCOL.pt}"
QUEUE_16="${QUEUE_16-teacher base_s0 base_s1 base_s2 kd_kl_s0 kd_kl_s1 kd_output_s0 kd_cwd_s0 kd_mse_s0
  kd_cosine_s0 kd_off_last_s0 kd_cwd_w1_s0 kd_output_s1 kd_cwd_s1 kd_mse_s1 kd_cosine_s1 kd_off_last_s1
  kd_cwd_w1_s1}"
QUEUE_14="${QUEUE_14-lab_base_s0 lab_base_s1 lab_base_s2 lab_kd_s0 lab_unlab_kd_s0 lab_unlab_pseudo_s0 lab_kd_s1
  lab_unlab_kd_s1 lab_unlab_pseudo_s1 lab_kd_2x_s0 lab_unlab_kd_half_s0 lab_unlab_pseudo_half_s0}"
STATE="${STATE:-runs/deeppcb_lanes_$PROTOCOL}"
# each lane: one main process + its loader workers, so the lanes together fill the cores
workers=$(( $(nproc) / LANES - 1 )); export WORKERS="${WORKERS:-$(( workers > 1 ? workers : 1 ))}"
KD="${KD_SCRIPT:-bash benchmarks/deeppcb_kd.sh}"  # tests put a recorder here

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  for row in $QUEUE_16; do ISSUE=16 ROW="$row" $KD | grep -v '^DeepPCB'; done
  for row in $QUEUE_14; do ISSUE=14 ROW="$row" $KD | grep -v '^DeepPCB'; done
  exit 0
fi

mkdir -p "$STATE"
QUEUE="$STATE/queue"
{ for row in $QUEUE_16; do echo "16 $row"; done; for row in $QUEUE_14; do echo "14 $row"; done; } > "$QUEUE"
rm -f "$STATE/teacher.failed"
[[ -z "$QUEUE_14" ]] || ISSUE=14 PREPARE_ONLY=1 $KD || exit 1  # the split once, before lanes race for it

# the first line of the queue, removed under a lock
next_row() { flock "$QUEUE.lock" bash -c 'head -n 1 "$0"; sed -i 1d "$0"' "$QUEUE"; }

wait_for() {
  until [[ -f "$1" ]]; do
    [[ -f "$STATE/teacher.failed" ]] && return 1
    sleep 5
  done
}

lane() {
  local line issue row need
  while line="$(next_row)" && [[ -n "$line" ]]; do
    read -r issue row <<< "$line"
    need="$(ISSUE="$issue" ROW="$row" NEEDS_ONLY=1 $KD)" || { echo "== $row: unknown row, skipped"; continue; }
    if [[ -n "$need" ]] && ! wait_for "$need"; then echo "== $row: dropped, the teacher failed"; continue; fi
    echo "== $(date +%T) $issue $row"
    ISSUE="$issue" ROW="$row" $KD || { [[ "$row" == teacher* ]] && touch "$STATE/teacher.failed"; }
  done
  echo "== $(date +%T) lane done"
}

echo "deeppcb_lanes.sh: $LANES lanes, $(wc -l < "$QUEUE") rows, teacher $TEACHER; logs $STATE/lane<k>.log"
for k in $(seq 1 "$LANES"); do
  lane > "$STATE/lane$k.log" 2>&1 &
  sleep 2  # the teacher row starts first
done
wait
[[ -z "$QUEUE_16" ]] || ISSUE=16 COMPARE_ONLY=1 $KD
[[ -z "$QUEUE_14" ]] || ISSUE=14 COMPARE_ONLY=1 $KD
echo "deeppcb_lanes.sh: done"
