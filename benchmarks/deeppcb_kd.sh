#!/usr/bin/env bash
# DeepPCB distillation protocol (issues 16 and 14): every row is one training run; one command per row.
#
#   PROTOCOL=cpu bash benchmarks/deeppcb_kd.sh                # all issue-16 rows, then the tables
#   PROTOCOL=cpu ROW=teacher bash benchmarks/deeppcb_kd.sh    # one row (then commit the teacher weights)
#   PROTOCOL=cpu ROW="base_s0 kd_cwd" bash benchmarks/deeppcb_kd.sh  # rows; kd_cwd = all its seeds
#   PROTOCOL=gpu ISSUE=14 bash benchmarks/deeppcb_kd.sh       # all issue-14 rows on the GPU
#   DRY_RUN=1 ... prints the commands only (nothing is trained or written).
#   COMPARE_ONLY=1 ... writes the tables of the rows finished so far (trains nothing).
#   PREPARE_ONLY=1 ... writes the data the rows need (tiles, issue-14 split) and stops.
#   NEEDS_ONLY=1 ... prints, per selected row, the teacher file it starts from (an empty line: none).
#   benchmarks/deeppcb_lanes.sh runs rows of both issues side by side on one GPU box.
#
# PROTOCOL
#   cpu  320 px tiles of the 640 images (scripts/deeppcb_tiles.py -> datasets/deeppcb_tiles320): the
#        defects keep their native resolution. Every row trains on the same fixed random SUBSET
#        [1000] of the 4,000 train tiles and is validated on all 2,000 val tiles once, at the end
#        (--noval: per-epoch validation would cost as much as training); batch 16, 2 workers, cpu. The
#        tables are written twice: on the tiles, and on the 500 full 640-px val images (the same weights
#        validated again by benchmarks/revalidate.py: no defect cut by a tile border; the gpu metric).
#   gpu  the 640 images from ../shared directly; batch 64, 8 workers, device 0, images cached in RAM,
#        validated once at the end (--noval, as cpu: no row is picked by its best val epoch).
#   Schedules (cpu: students 12 epochs (6 proved too short: seeds 0.130-0.197 mAP@0.5:0.95), teacher 40 (~2 min
#   per teacher epoch on an idle 2-core box); gpu: 50 / 100, ~4 / ~8 min per row on one H100 shared by 4 rows)
#   and their measured costs: docs/BENCHMARKS.md, "DeepPCB protocol". Rows of one EPOCHS share a folder
#   (runs/deeppcb_<PROTOCOL>_e<EPOCHS>), so schedules never mix; the teacher row is skipped while its
#   weights file exists (committed for cpu). The protocol fixes data and image size, not the
#   device: with a GPU box, PROTOCOL=cpu DEVICE=0 TEACHER_EPOCHS=100 ROW=teacher gives a stronger teacher.
# Students: yolov5n from the official COCO checkpoint ../shared/weights/yolov5n.pt (pretrained, as
#   users start), the same for every row. Teacher: yolov5s from scratch (no yolov5s.pt offline),
#   seed 0, same training data, trained once by ROW=teacher and stripped to
#   weights/deeppcb_teacher_yolov5s_<PROTOCOL>.pt; later sessions reuse that file. Its mAPs on this
#   protocol's val set (for gap recovered) are measured once into <teacher>_val_<PROTOCOL>.json.
# Every run: same data, image size, epochs, batch, hyp (YOLOv5 defaults) and augmentation; seed in the
#   row name (_s<k>). A KD row is the distillation defaults (output KD at the default --d_weight + KL,
#   since session 7) plus one flag, i.e. what a user gets by adding that flag.
# Rows, issue 16 (ISSUE=16, default):
#   teacher | base_s0 base_s1 base_s2 | kd_output_s* (output KD alone: --no-d_kl) | kd_kl_s* (--d_kl: the
#   defaults) | kd_mse_s* kd_cosine_s* kd_cwd_s* (--d_feature) | kd_off_last_s* (--d_off_last OFF_LAST) |
#   kd_cwd_w1_s* (--d_feature cwd at gain 1, the best on the synthetic set) | kd_w<W>_s* (output KD alone at
#   --d_weight W, for W in D_WEIGHTS [0.5], the default before session 6, when 2 replaced it: at 0.5 the
#   output term was 5-27 % of the detection loss on these tiles); KD seeds: KD_SEEDS [0 1]
# Rows, issue 14 (ISSUE=14; a fixed half of the train images keeps its labels, split seed 0, by image):
#   lab_base_s0..2 (labelled half alone) | lab_kd_s* (KD on the labelled half) | lab_unlab_kd_s* (KD on
#   labelled + unlabelled: --d_unlabeled images/unlabelled_*) | lab_unlab_pseudo_s* (the same + the
#   teacher's boxes at conf >= PSEUDO_CONF as labels, --d_pseudo) | ceiling = the issue-16 base_s* rows.
#   lab_kd_2x_s* (control: KD on the labelled half for 2 x EPOCHS, the optimizer steps of lab_unlab_*) |
#   lab_unlab_kd_half_s* lab_unlab_pseudo_half_s* (the other control: lab_unlab_* for EPOCHS / 2, the optimizer
#   steps of lab_kd_s*: an epoch over both halves is twice as long, so only the images differ) |
#   SSL_TEACHER [full]: full = the issue-16 teacher (trained on every label of the training set,
#   unlabelled half included; the issue allows it, and it costs nothing more), lab = teacher_lab, a
#   yolov5s trained on the labelled half only (row teacher_lab, first in the list).
# TEACHER_ROUND [1]: 2 (issue 16) = a stronger teacher without a GPU: row teacher trains the round-1 teacher
#   TEACHER_EPOCHS [30] more epochs (a second LR cycle from its weights, --cfg '': its own anchors) into
#   weights/deeppcb_teacher2_yolov5s_<PROTOCOL>.pt; KD rows use it in <PROJECT16>_t2; the baselines need no
#   teacher, so round 2 lists none and its tables read them from <PROJECT16> (runs/deeppcb_<PROTOCOL>_e<EPOCHS>).
#   gpu (PROTOCOL=cpu, both issues) = the gpu protocol's committed teacher (yolov5s, 100 epochs at 640 on all
#   1,000 images: weights/deeppcb_teacher_yolov5s_gpu.pt) on the cpu tiles, which keep the native resolution
#   it was trained at; nothing to train. KD rows go to <PROJECT16>_tgpu (issue 14: <PROJECT16>_ssl_tgpu); the
#   baselines (base_s*, lab_base_s*) are not listed again and the tables read them from the round-1 folders.
# Other settings: SHARED [../shared]  PROJECT [runs/deeppcb_<PROTOCOL>_e<EPOCHS>(_ssl)]  SUBSET  DATA  IMGSZ  BATCH
#   WORKERS  DEVICE  EXTRA  STUDENT  TEACHER  TEACHER_LAB  OFF_LAST [max(1, EPOCHS/10)]  PYTHON
# A row whose results.csv has its epochs is skipped; an interrupted one resumes from its last.pt.
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PROTOCOL="${PROTOCOL:-cpu}"
ISSUE="${ISSUE:-16}"
DRY_RUN="${DRY_RUN:-0}"
PYTHON="${PYTHON:-python3}"
SHARED="${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd || echo "$ROOT/shared")}"
STUDENT="${STUDENT:-$SHARED/weights/yolov5n.pt}"
KD_SEEDS="${KD_SEEDS:-0 1}"
BASE_SEEDS="${BASE_SEEDS:-0 1 2}"
D_WEIGHTS="${D_WEIGHTS:-0.5}"
PSEUDO_CONF="${PSEUDO_CONF:-0.5}"
SSL_TEACHER="${SSL_TEACHER:-full}"
TEACHER_ROUND="${TEACHER_ROUND:-1}"
FAILED=()

die() { echo "deeppcb_kd.sh: error: $*" >&2; exit 2; }

# cpu: a fixed random subset of SUBSET tiles (of 4,000) is the training set of every row (cost, see docs)
case "$PROTOCOL" in
  cpu) TILE=320; TILES="datasets/deeppcb_tiles320"; SUBSET="${SUBSET:-1000}"
       DEF_IMGSZ=320; DEF_BATCH=16; DEF_WORKERS=2; DEF_DEVICE=cpu; DEF_EXTRA="--noplots --noval"
       DEF_EPOCHS=12; DEF_TEACHER_EPOCHS=40 ;;
  gpu) TILE=640; TILES="datasets/deeppcb_640"; SUBSET="${SUBSET:-0}"
       DEF_IMGSZ=640; DEF_BATCH=64; DEF_WORKERS=8; DEF_DEVICE=0; DEF_EXTRA="--noplots --noval --cache ram"
       DEF_EPOCHS=50; DEF_TEACHER_EPOCHS=100 ;;
  *) die "PROTOCOL must be cpu or gpu, got '$PROTOCOL'" ;;
esac
case "$TEACHER_ROUND" in
  1) ;;
  2) [[ "$ISSUE" == 16 ]] || die "TEACHER_ROUND=2 is for ISSUE=16 (issue 14 rows use the round-1 teacher)"
     DEF_TEACHER_EPOCHS=30 ;;
  gpu) [[ "$PROTOCOL" == cpu ]] || die "TEACHER_ROUND=gpu is for PROTOCOL=cpu (the gpu protocol's own teacher)" ;;
  *) die "TEACHER_ROUND must be 1, 2 or gpu, got '$TEACHER_ROUND'" ;;
esac
[[ "$SUBSET" =~ ^[0-9]+$ ]] || die "SUBSET must be a number of tiles (0 = all), got '$SUBSET'"
# names scripts/deeppcb_tiles.py gives its outputs (--train-subset N, --labelled-fraction 0.5 --split-seed 0)
POOL="$( (( SUBSET )) && echo "sub${SUBSET}_s0_")"
SUBSET_FLAG="$( (( SUBSET )) && echo "--train-subset $SUBSET")"
SPLIT="${POOL}f50_s0"
if [[ "$PROTOCOL" == gpu && "$SUBSET" == 0 ]]; then DEF_DATA="$SHARED/datasets/deeppcb/deeppcb.yaml"
else DEF_DATA="$TILES/$(basename "$TILES")${POOL:+_${POOL%_}}.yaml"; fi
DATA="${DATA:-$DEF_DATA}"
LAB_DATA="${LAB_DATA:-$TILES/$(basename "$TILES")_labelled_$SPLIT.yaml}"
IMGSZ="${IMGSZ:-$DEF_IMGSZ}"; BATCH="${BATCH:-$DEF_BATCH}"; WORKERS="${WORKERS:-$DEF_WORKERS}"
DEVICE="${DEVICE:-$DEF_DEVICE}"; EXTRA="${EXTRA-$DEF_EXTRA}"  # EXTRA="" drops the defaults
EPOCHS="${EPOCHS:-$DEF_EPOCHS}"; TEACHER_EPOCHS="${TEACHER_EPOCHS:-$DEF_TEACHER_EPOCHS}"
OFF_LAST="${OFF_LAST:-$(( EPOCHS / 10 > 1 ? EPOCHS / 10 : 1 ))}"
HALF_EPOCHS=$(( EPOCHS / 2 > 1 ? EPOCHS / 2 : 1 ))
PROJECT16="runs/deeppcb_${PROTOCOL}_e$EPOCHS"  # one folder per schedule: rows of different epochs never mix
case "$ISSUE" in
  16) PROJECT="${PROJECT:-$PROJECT16$( [[ "$TEACHER_ROUND" != 1 ]] && echo "_t$TEACHER_ROUND")}" ;;  # _t2, _tgpu
  14) PROJECT="${PROJECT:-${PROJECT16}_ssl$( [[ "$TEACHER_ROUND" == gpu ]] && echo _tgpu)}" ;;
  *) die "ISSUE must be 16 or 14, got '$ISSUE'" ;;
esac
FIRST_TEACHER="weights/deeppcb_teacher_yolov5s_$PROTOCOL.pt"  # round 1; round 2 starts from it
SCRATCH_YOLOV5S="--weights '' --cfg yolov5s.yaml"  # how round-1 teachers start
if [[ "$TEACHER_ROUND" == 2 ]]; then TEACHER="${TEACHER:-weights/deeppcb_teacher2_yolov5s_$PROTOCOL.pt}"
  TEACHER_START="--weights $FIRST_TEACHER --cfg ''"
elif [[ "$TEACHER_ROUND" == gpu ]]; then TEACHER="${TEACHER:-weights/deeppcb_teacher_yolov5s_gpu.pt}"
  TEACHER_START=""
else TEACHER="${TEACHER:-$FIRST_TEACHER}"; TEACHER_START="$SCRATCH_YOLOV5S"; fi
case "$SSL_TEACHER" in
  full) TEACHER_LAB="${TEACHER_LAB:-$TEACHER}" ;;
  lab) [[ "$TEACHER_ROUND" == 1 ]] || die "SSL_TEACHER=lab trains its own teacher: use it with TEACHER_ROUND=1"
       TEACHER_LAB="${TEACHER_LAB:-weights/deeppcb_teacher_lab_yolov5s_$PROTOCOL.pt}" ;;
  *) die "SSL_TEACHER must be full or lab, got '$SSL_TEACHER'" ;;
esac
UNLABELLED="$TILES/images/unlabelled_$SPLIT"
for w in $D_WEIGHTS; do [[ "$w" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "D_WEIGHTS must hold numbers, got '$w'"; done
for v in EPOCHS TEACHER_EPOCHS IMGSZ BATCH WORKERS OFF_LAST; do
  [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -gt 0 ]] || die "$v must be a positive integer, got '${!v}'"
done

rows_16() {
  local s m
  [[ "$TEACHER_ROUND" == gpu ]] || echo teacher  # the gpu teacher is trained by PROTOCOL=gpu only
  [[ "$TEACHER_ROUND" == 1 ]] && for s in $BASE_SEEDS; do echo "base_s$s"; done
  for m in output kl mse cosine cwd off_last cwd_w1; do for s in $KD_SEEDS; do echo "kd_${m}_s$s"; done; done
  for m in $D_WEIGHTS; do for s in $KD_SEEDS; do echo "kd_w${m}_s$s"; done; done
}
rows_14() {
  local s m
  [[ "$SSL_TEACHER" == lab ]] && echo teacher_lab
  [[ "$TEACHER_ROUND" == 1 ]] && for s in $BASE_SEEDS; do echo "lab_base_s$s"; done
  for m in kd unlab_kd unlab_pseudo kd_2x unlab_kd_half unlab_pseudo_half; do for s in $KD_SEEDS; do echo "lab_${m}_s$s"; done; done
}

# ROW entries: exact row names, or a row without its _s<k> suffix meaning all of its seeds.
selected_rows() {
  local all want r hit
  all="$(rows_$ISSUE)"
  [[ -z "${ROW:-}" ]] && { echo "$all"; return; }
  for want in $ROW; do
    hit=0
    for r in $all; do
      if [[ "$r" == "$want" || "$r" == "${want}_s"[0-9]* ]]; then echo "$r"; hit=1; fi
    done
    (( hit )) || die "unknown row '$want' for ISSUE=$ISSUE; rows: $(echo $all)"
  done
}

common() {
  echo "--imgsz $IMGSZ --batch-size $BATCH --workers $WORKERS --device $DEVICE $EXTRA"
}
student() { echo "--weights $STUDENT --cfg ''"; }

# "<epochs> <script> <flags>" of a row
row_spec() {
  local row="$1" seed="${1##*_s}" data="$DATA" t="$TEACHER" kd
  [[ "$row" == lab_* ]] && { data="$LAB_DATA"; t="$TEACHER_LAB"; }
  kd="train_distillation.py $(student) --data $data --seed $seed --t_weights $t"  # the defaults; rows add flags
  case "$row" in
    teacher) echo "$TEACHER_EPOCHS train.py $TEACHER_START --data $DATA --seed 0" ;;
    teacher_lab) echo "$TEACHER_EPOCHS train.py $SCRATCH_YOLOV5S --data $LAB_DATA --seed 0" ;;
    base_s*|lab_base_s*) echo "$EPOCHS train.py $(student) --data $data --seed $seed" ;;
    kd_output_s*) echo "$EPOCHS $kd --no-d_kl" ;;
    lab_kd_s*) echo "$EPOCHS $kd" ;;
    lab_kd_2x_s*) echo "$(( 2 * EPOCHS )) $kd" ;;
    lab_unlab_kd_s*) echo "$EPOCHS $kd --d_unlabeled $UNLABELLED" ;;
    lab_unlab_pseudo_s*) echo "$EPOCHS $kd --d_unlabeled $UNLABELLED --d_pseudo $PSEUDO_CONF" ;;
    lab_unlab_kd_half_s*) echo "$HALF_EPOCHS $kd --d_unlabeled $UNLABELLED" ;;
    lab_unlab_pseudo_half_s*) echo "$HALF_EPOCHS $kd --d_unlabeled $UNLABELLED --d_pseudo $PSEUDO_CONF" ;;
    kd_mse_s*|kd_cosine_s*|kd_cwd_s*)
      local m="${row#kd_}"; m="${m%_s*}"
      echo "$EPOCHS $kd --d_feature $m" ;;
    kd_kl_s*) echo "$EPOCHS $kd --d_kl" ;;
    kd_cwd_w1_s*) echo "$EPOCHS $kd --d_feature cwd --d_feature_weight 1" ;;
    kd_w*_s*)
      local w="${row#kd_w}"; w="${w%_s*}"
      echo "$EPOCHS $kd --no-d_kl --d_weight $w" ;;
    kd_off_last_s*) echo "$EPOCHS $kd --d_off_last $OFF_LAST" ;;
    *) die "no spec for row '$row'" ;;
  esac
}

epochs_done() {
  local csv="$1/results.csv"
  if [[ -f "$csv" ]]; then echo $(( $(grep -c . "$csv") - 1 )); else echo 0; fi
}

# run: print a command, and execute it unless DRY_RUN (eval: flags hold quoted empty values)
run() {
  echo "   $*"
  [[ "$DRY_RUN" == 1 ]] || eval "$*"
}

prepare_data() {
  [[ "$PROTOCOL" == cpu || "$ISSUE" == 14 || "$SUBSET" != 0 ]] || return 0
  local split="$SUBSET_FLAG"
  [[ "$ISSUE" == 14 ]] && split="$split --labelled-fraction 0.5 --split-seed 0"
  echo "== data"
  run "$PYTHON scripts/deeppcb_tiles.py --data $SHARED/datasets/deeppcb/deeppcb.yaml --tile $TILE --out $TILES $split" \
    || die "tiling failed"
}

# Teacher weights: best.pt stripped to fp16 without optimizer state (~14 MB), to commit and reuse.
save_teacher() {
  run "$PYTHON -c \"from models.checkpoint import strip_checkpoint as s; s('$1/weights/best.pt', '$2', half=True)\""
}

# The teacher's mAPs on this protocol's val set (for gap recovered), kept beside its weights.
teacher_metrics() {
  local t="$1" json="${1%.pt}_val_$PROTOCOL.json" data="$DATA"
  [[ -f "$json" || ( ! -f "$t" && "$DRY_RUN" != 1 ) ]] && return 0
  run "$PYTHON -c \"import json, val; r = val.run(data='$data', weights='$t', imgsz=$IMGSZ, batch_size=$BATCH, \
device='$DEVICE', workers=$WORKERS, half=False, plots=False, project='$PROJECT', name='teacher_val', \
exist_ok=True)[0]; \
json.dump({'mAP_0.5': r[2], 'mAP_0.5:0.95': r[3]}, open('$json', 'w'))\""
}

# The teacher file a row starts from (distillation rows, the round-2 teacher), or nothing.
teacher_needed() {
  local row="$1" script="$2" flags="$3"
  if [[ "$script" == train_distillation.py ]]; then flags="${flags##*--t_weights }"; echo "${flags%% *}"
  elif [[ "$row" == teacher && "$TEACHER_ROUND" == 2 ]]; then echo "$FIRST_TEACHER"; fi
}

run_row() {
  local row="$1" spec epochs script flags dir done
  spec="$(row_spec "$row")" || exit 2
  read -r epochs script flags <<< "$spec"
  dir="$PROJECT/$row"
  local weights=""
  case "$row" in teacher) weights="$TEACHER" ;; teacher_lab) weights="$TEACHER_LAB" ;; esac
  if [[ -n "$weights" && -f "$weights" ]]; then  # trained once, reused by every schedule and session
    echo "== $row: $weights exists, skipping (delete it to train the teacher again)"; return 0
  fi
  done="$(epochs_done "$dir")"
  if (( done >= epochs )); then
    echo "== $row: done ($done epochs), skipping"
    [[ -z "$weights" ]] || save_teacher "$dir" "$weights" || FAILED+=("$row")  # trained but not yet saved
    return 0
  fi
  local need; need="$(teacher_needed "$row" "$script" "$flags")"
  if [[ -n "$need" && ! -f "$need" && "$DRY_RUN" != 1 ]]; then
    echo "== $row: teacher $need missing: run its teacher row first"; FAILED+=("$row"); return 0
  fi
  echo "== $row ($epochs epochs)"
  if [[ -f "$dir/weights/last.pt" ]]; then
    flags="--resume $dir/weights/last.pt"
  else
    [[ -e "$dir" && "$DRY_RUN" != 1 ]] && rm -rf "$dir"  # a partial run without last.pt cannot resume
    flags="$flags --epochs $epochs $(common) --project $PROJECT --name $row --exist-ok"
  fi
  [[ "$DRY_RUN" == 1 ]] || mkdir -p "$PROJECT/logs"
  if ! run "$PYTHON $script $flags > $PROJECT/logs/$row.log 2>&1"; then
    echo "   FAILED: see $PROJECT/logs/$row.log"; FAILED+=("$row"); return 0
  fi
  [[ -z "$weights" ]] || save_teacher "$dir" "$weights" || FAILED+=("$row")
}

# Tables of runs for both metrics (compare_<val>mAP_*.md); the teacher's value comes from a json beside its
# weights; val: '' = each run's own final validation (results.csv), else revalidate.py's val_<val>.json.
tables() {
  local runs="$1" json="$2" val="$3" metric tm tag
  for metric in mAP_0.5:0.95 mAP_0.5; do
    tm="" tag="${val:+${val}_}${metric//[.:]/}"  # mAP_0595, full640_mAP_05
    [[ -f "$json" ]] && tm="--teacher-map $($PYTHON -c "import json; print(json.load(open('$json'))['$metric'])")"
    run "$PYTHON compare.py $runs --seeds --metric $metric $tm ${val:+--val $val }--md $PROJECT/compare_$tag.md \
--csv $PROJECT/compare_$tag.csv" || FAILED+=("compare $tag")
  done
}

compare_runs() {
  local t="$TEACHER" runs="$PROJECT"
  [[ "$ISSUE" == 14 ]] && { t="$TEACHER_LAB"; runs="$PROJECT $PROJECT16/base_s*"; }
  [[ "$TEACHER_ROUND" != 1 ]] && runs="$PROJECT $PROJECT16/base_s*"  # baselines need no teacher: round 1's
  [[ "$TEACHER_ROUND" == gpu && "$ISSUE" == 14 ]] && runs="$runs ${PROJECT16}_ssl/lab_base_s*"
  echo "== compare"
  teacher_metrics "$t" || FAILED+=("teacher metrics")
  tables "$runs" "${t%.pt}_val_$PROTOCOL.json" ""
  [[ "$PROTOCOL" == cpu ]] || return 0
  # The same weights on the 500 full 640-px val images: tiles cut the defects on their borders, and the
  # tile metric ranks models differently (docs/BENCHMARKS.md, session 10); this is the gpu protocol's metric.
  echo "== full-image validation"
  local teacher_file=""; [[ -f "$t" || "$DRY_RUN" == 1 ]] && teacher_file="$t"
  run "$PYTHON benchmarks/revalidate.py $runs $teacher_file --data $SHARED/datasets/deeppcb/deeppcb.yaml \
--imgsz 640 --name full640 --device $DEVICE --workers $WORKERS" || { FAILED+=("full-image validation"); return 0; }
  tables "$runs" "${t%.pt}_val_full640.json" full640
}

# NEEDS_ONLY: the teacher file of each selected row, read from the row's own command (deeppcb_lanes.sh waits for it)
print_needs() {
  local rows row spec epochs script flags
  rows="$(selected_rows)" || exit 2
  for row in $rows; do
    spec="$(row_spec "$row")" || exit 2
    read -r epochs script flags <<< "$spec"
    echo "$(teacher_needed "$row" "$script" "$flags")"
  done
}

main() {
  local rows row
  [[ "${NEEDS_ONLY:-0}" == 1 ]] && { print_needs; return; }
  echo "DeepPCB protocol $PROTOCOL, issue $ISSUE -> $PROJECT (students $EPOCHS epochs, teacher $TEACHER_EPOCHS)"
  if [[ "${COMPARE_ONLY:-0}" == 1 ]]; then  # the tables of the rows finished so far; nothing is trained
    compare_runs
  elif [[ "${PREPARE_ONLY:-0}" == 1 ]]; then
    prepare_data
  else
    rows="$(selected_rows)" || exit 2
    prepare_data
    for row in $rows; do run_row "$row"; done
    [[ -z "${ROW:-}" ]] && compare_runs
  fi
  if (( ${#FAILED[@]} )); then echo "Failed: ${FAILED[*]}" >&2; exit 1; fi
}

main
