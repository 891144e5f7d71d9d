#!/usr/bin/env bash
# Distillation sweep: teacher x student x method x d_weight with train_distillation.py, the matching
# train.py baselines, then one comparison table + plot (compare.py).
#
# Usage:
#   NAME=demo TEACHERS="weights/demo_teacher_yolov5s.pt" STUDENTS="yolov5n.yaml" \
#   METHODS="output feature-cwd kl" DWEIGHTS="0.5 2" EPOCHS=20 bash scripts/sweep.sh
#
# Grid (space-separated lists):
#   TEACHERS  teacher checkpoints (.pt)                     [weights/demo_teacher_yolov5s.pt]
#   STUDENTS  student model YAMLs, or .pt files to start from [yolov5n.yaml]
#   METHODS   output | kl | output+kl | feature-<loss>[-std] | kl+feature-<loss>[-std]
#             (<loss>: mse, cosine, cwd; -std adds --d_standardize)   [output feature-cwd kl]
#             Each run has exactly the named terms: output distillation stays on unless the method has kl
#             without output; KL (on by default in train_distillation.py) is off unless named.
#   DWEIGHTS  gain of the method's main term: --d_weight when output distillation is on,
#             --d_alpha (KL gain) for kl without output; per image (README, "Units")  [0.5 2]
#   SEEDS     seeds of the baseline runs; >= 2 lets compare.py measure the noise  [0]
# Common flags, passed to every run:
#   DATA [data/synthetic.yaml]  EPOCHS [20]  IMGSZ [160]  BATCH [16]  DEVICE ['' = auto]
#   EXTRA  any further train.py flags, e.g. EXTRA="--workers 0 --patience 1000"
# Output:
#   NAME [demo] -> PROJECT [runs/sweep_$NAME]; runs are named <student>_<method>_dw<w>_<teacher>
#   and <student>_baseline_seed<s>; logs in $PROJECT/logs; compare.{md,csv,png} in $PROJECT.
# Other:
#   PYTHON [python3]  TEACHER_MAP  (teacher metric for compare.py --teacher-map; by default a
#   teacher given as <run>/weights/best.pt is compared through its run folder)
#   DRY_RUN=1 prints the commands only.  RESUME=0 restarts unfinished runs from scratch instead
#   of resuming them from their last.pt.
# Re-running the same command skips finished runs (results.csv has EPOCHS rows), so a killed
# sweep continues where it stopped. A failed run is reported at the end; the others still run.
# Note: a run stopped early by --patience never reaches EPOCHS rows and would be retrained.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="${NAME:-demo}"
TEACHERS="${TEACHERS:-weights/demo_teacher_yolov5s.pt}"
STUDENTS="${STUDENTS:-yolov5n.yaml}"
METHODS="${METHODS:-output feature-cwd kl}"
DWEIGHTS="${DWEIGHTS:-0.5 2}"
SEEDS="${SEEDS:-0}"
DATA="${DATA:-data/synthetic.yaml}"
EPOCHS="${EPOCHS:-20}"
IMGSZ="${IMGSZ:-160}"
BATCH="${BATCH:-16}"
DEVICE="${DEVICE:-}"
EXTRA="${EXTRA:-}"
PYTHON="${PYTHON:-python3}"
PROJECT="${PROJECT:-runs/sweep_${NAME}}"
DRY_RUN="${DRY_RUN:-0}"
RESUME="${RESUME:-1}"
TEACHER_MAP="${TEACHER_MAP:-}"
FAILED=()

die() { echo "sweep.sh: error: $*" >&2; exit 2; }

# <run>/weights/best.pt -> <run>; anything else -> file name without extension
weights_label() {
  local p="$1" parent
  parent="$(basename "$(dirname "$p")")"
  if [[ "$parent" == "weights" ]]; then basename "$(dirname "$(dirname "$p")")"; else basename "${p%.*}"; fi
}

# Distillation flags of a method name; exits on an unknown one so a typo never trains the wrong thing.
method_flags() {
  local method="$1" tok output=0 kl=0 flags=()
  IFS='+' read -ra toks <<< "$method"
  for tok in "${toks[@]}"; do
    case "$tok" in
      output) output=1 ;;
      kl) kl=1 ;;
      feature-mse|feature-cosine|feature-cwd) flags+=(--d_feature "${tok#feature-}") ;;
      feature-mse-std|feature-cosine-std|feature-cwd-std)
        tok="${tok#feature-}"; flags+=(--d_feature "${tok%-std}" --d_standardize) ;;
      *) die "unknown method '$method' (token '$tok'); use output, kl, output+kl, feature-<mse|cosine|cwd>[-std]" ;;
    esac
  done
  if (( kl )); then flags+=(--d_kl); else flags+=(--no-d_kl); fi
  if (( kl && !output )); then flags+=(--no-d_output); fi
  echo "${flags[@]}"
}

# --d_weight or --d_alpha, whichever gain the method's main term uses
weight_flag() {
  local method="$1" w="$2"
  if [[ "+$method+" == *"+kl+"* && "+$method+" != *"+output+"* ]]; then echo "--d_alpha $w"; else echo "--d_weight $w"; fi
}

student_flags() {
  if [[ "$1" == *.pt ]]; then echo "--weights $1 --cfg ''"; else echo "--cfg $1 --weights ''"; fi
}

common_flags() {
  echo "--data $DATA --epochs $EPOCHS --imgsz $IMGSZ --batch-size $BATCH ${DEVICE:+--device $DEVICE} $EXTRA"
}

# Epoch rows in a run's results.csv (0 when there is none)
epochs_done() {
  local csv="$1/results.csv"
  if [[ -f "$csv" ]]; then echo $(( $(grep -c . "$csv") - 1 )); else echo 0; fi
}

# run_one <name> <script> <flags...>: skip if finished, resume if interrupted, else train.
run_one() {
  local name="$1" script="$2"; shift 2
  local dir="$PROJECT/$name" cmd done
  done="$(epochs_done "$dir")"
  if (( done >= EPOCHS )); then
    echo "== $name: done ($done epochs), skipping"; return 0
  fi
  if [[ "$RESUME" == 1 && -f "$dir/weights/last.pt" ]]; then
    cmd="$PYTHON $ROOT/$script --resume $dir/weights/last.pt ${DEVICE:+--device $DEVICE}"
    echo "== $name: resuming after $done epochs"
  else
    [[ -e "$dir" && "$DRY_RUN" != 1 ]] && rm -rf "$dir"  # a partial run without last.pt cannot resume
    cmd="$PYTHON $ROOT/$script $* --project $PROJECT --name $name --exist-ok"
    echo "== $name"
  fi
  echo "   $cmd"
  [[ "$DRY_RUN" == 1 ]] && return 0
  mkdir -p "$PROJECT/logs"
  # eval: flags hold quoted empty values (--cfg '') and EXTRA is meant to be word-split
  if ! eval "$cmd" > "$PROJECT/logs/$name.log" 2>&1; then
    echo "   FAILED: see $PROJECT/logs/$name.log"; tail -n 5 "$PROJECT/logs/$name.log" | sed 's/^/   | /'
    FAILED+=("$name")
  fi
}

check_inputs() {
  [[ "$EPOCHS" =~ ^[0-9]+$ && "$EPOCHS" -gt 0 ]] || die "EPOCHS must be a positive integer, got '$EPOCHS'"
  local t m
  for t in $TEACHERS; do [[ -f "$t" || "$DRY_RUN" == 1 ]] || die "teacher '$t' not found"; done
  for m in $METHODS; do method_flags "$m" > /dev/null || exit 2; done
  [[ -n "$STUDENTS" && -n "$METHODS" && -n "$DWEIGHTS" ]] || die "STUDENTS, METHODS and DWEIGHTS must not be empty"
}

main() {
  check_inputs
  local s t m w seed sname
  echo "Sweep $NAME -> $PROJECT"
  for s in $STUDENTS; do
    sname="$(weights_label "$s")"
    for seed in $SEEDS; do
      run_one "${sname}_baseline_seed${seed}" train.py $(student_flags "$s") $(common_flags) --seed "$seed"
    done
    for t in $TEACHERS; do
      for m in $METHODS; do
        for w in $DWEIGHTS; do
          run_one "${sname}_${m}_dw${w}_$(weights_label "$t")" train_distillation.py $(student_flags "$s") \
            $(common_flags) --t_weights "$t" $(method_flags "$m") $(weight_flag "$m" "$w")
        done
      done
    done
  done
  compare_runs
  if (( ${#FAILED[@]} )); then echo "Failed runs: ${FAILED[*]}" >&2; exit 1; fi
}

# Teachers that are <run>/weights/best.pt join the table, which gives compare.py their mAP.
compare_runs() {
  local args=("$PROJECT") t tdir
  for t in $TEACHERS; do
    tdir="$(dirname "$(dirname "$t")")"
    [[ "$(basename "$(dirname "$t")")" == weights && -f "$tdir/results.csv" ]] && args+=("$tdir")
  done
  [[ -n "$TEACHER_MAP" ]] && args+=(--teacher-map "$TEACHER_MAP")
  local cmd="$PYTHON $ROOT/compare.py ${args[*]} --plot $PROJECT/compare.png --csv $PROJECT/compare.csv --md $PROJECT/compare.md"
  echo "== compare"; echo "   $cmd"
  [[ "$DRY_RUN" == 1 ]] && return 0
  $cmd || FAILED+=("compare")
}

main
