"""benchmarks/deeppcb_lanes.sh: the queue order, rows waiting for the teacher, rows dropped when it fails.
deeppcb_kd.sh is replaced by a recorder (KD_SCRIPT), so nothing is trained."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LANES = ROOT / 'benchmarks' / 'deeppcb_lanes.sh'

# Logs "<issue> <row> <teacher present: 0/1>" (or the mode), names TEACHER as the file kd_* rows need, and
# plays the teacher row: it writes the teacher file after a pause, so rows that need it must have waited.
RECORDER = r'''#!/usr/bin/env bash
if [[ "${COMPARE_ONLY:-0}" == 1 ]]; then echo "compare $ISSUE" >> "$CALLS"; exit 0; fi
if [[ "${PREPARE_ONLY:-0}" == 1 ]]; then echo "prepare $ISSUE" >> "$CALLS"; exit 0; fi
if [[ "${NEEDS_ONLY:-0}" == 1 ]]; then [[ "$ROW" == kd_* ]] && echo "$TEACHER"; exit 0; fi
echo "$ISSUE $ROW $([[ -f "$TEACHER" ]] && echo 1 || echo 0)" >> "$CALLS"
if [[ "$ROW" == teacher ]]; then
  sleep 4  # lanes start 2 s apart: the second lane's baseline begins before the teacher is written
  [[ "${FAIL_TEACHER:-0}" == 1 ]] && exit 1
  touch "$TEACHER"
fi
'''


def run_lanes(tmp_path, **env):
    recorder = tmp_path / 'kd.sh'
    recorder.write_text(RECORDER)
    calls = tmp_path / 'calls.txt'
    full = {**os.environ, 'KD_SCRIPT': f'bash {recorder}', 'CALLS': str(calls), 'STATE': str(tmp_path / 'state'),
            'TEACHER': str(tmp_path / 'teacher.pt'), 'PROTOCOL': 'gpu', **env}
    r = subprocess.run(['bash', str(LANES)], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)
    return r, calls.read_text().splitlines() if calls.exists() else []


def test_every_row_runs_once_and_teacher_rows_wait_for_it(tmp_path):
    r, calls = run_lanes(tmp_path, LANES='3', QUEUE_16='teacher base_s0 kd_kl_s0 kd_cwd_s0', QUEUE_14='lab_base_s0')
    assert r.returncode == 0, r.stderr
    assert calls[0] == 'prepare 14'  # the split is written once, before the lanes
    rows = {c.split()[1]: c.split()[2] for c in calls if c.split()[0] in ('14', '16')}
    assert set(rows) == {'teacher', 'base_s0', 'kd_kl_s0', 'kd_cwd_s0', 'lab_base_s0'}
    assert rows['kd_kl_s0'] == rows['kd_cwd_s0'] == '1'  # started only once the teacher file existed
    assert rows['base_s0'] == '0'  # baselines do not wait
    assert calls[-2:] == ['compare 16', 'compare 14']


def test_a_failed_teacher_drops_the_rows_that_need_it(tmp_path):
    r, calls = run_lanes(tmp_path, LANES='2', FAIL_TEACHER='1', QUEUE_16='teacher base_s0 kd_kl_s0', QUEUE_14='')
    assert r.returncode == 0, r.stderr
    rows = [c.split()[1] for c in calls if c.split()[0] == '16']
    assert sorted(rows) == ['base_s0', 'teacher']
    lanes = ''.join(p.read_text() for p in (tmp_path / 'state').glob('lane*.log'))
    assert 'kd_kl_s0: dropped, the teacher failed' in lanes


def test_dry_run_and_bad_lanes(tmp_path):
    r = subprocess.run(['bash', str(LANES)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, 'DRY_RUN': '1', 'QUEUE_16': 'base_s0', 'QUEUE_14': '', 'PROTOCOL': 'gpu',
                            'EPOCHS': '97'})  # a schedule no local run has: nothing is skipped
    assert r.returncode == 0 and r.stdout.count('train.py') == 1 and '--imgsz 640' in r.stdout
    r = subprocess.run(['bash', str(LANES)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, 'LANES': '0'})
    assert r.returncode == 2 and 'LANES must be a positive integer' in r.stderr
