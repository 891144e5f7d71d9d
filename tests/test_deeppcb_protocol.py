"""DeepPCB protocol: the tiling rule and split of scripts/deeppcb_tiles.py, and the row plan of
benchmarks/deeppcb_kd.sh (dry run: commands printed, nothing trained)."""
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'deeppcb_kd.sh'
spec = importlib.util.spec_from_file_location('deeppcb_tiles', ROOT / 'scripts' / 'deeppcb_tiles.py')
tiles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiles)


def xyxy_rows(*boxes, size=64):
    """YOLO label text for (cls, x1, y1, x2, y2) boxes in pixels of a size x size image."""
    return ''.join(f'{c} {(x1 + x2) / 2 / size} {(y1 + y2) / 2 / size} {(x2 - x1) / size} {(y2 - y1) / size}\n'
                   for c, x1, y1, x2, y2 in boxes)


def make_dataset(root, n_train=2):
    """64 px 1-channel PNGs; image 0 has the three boxes the 60% rule is tested with."""
    for split, n in (('train', n_train), ('val', 1)):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'labels' / split).mkdir(parents=True)
        for i in range(n):
            img = np.full((64, 64), 255 * (i % 2), np.uint8)
            cv2.imwrite(str(root / 'images' / split / f'im{i}.png'), img)
            rows = xyxy_rows((1, 4, 4, 14, 14),     # inside tile (0, 0): kept as is
                             (2, 28, 40, 44, 50),   # 75% in tile (32, 32): kept, clipped to x >= 32
                             (3, 24, 4, 40, 14))    # 50% / 50%: dropped from both tiles
            (root / 'labels' / split / f'im{i}.txt').write_text(rows)
    data = root / 'data.yaml'
    data.write_text(yaml.safe_dump({'path': '.', 'train': 'images/train', 'val': 'images/val',
                                    'names': ['open', 'short', 'mousebite', 'spur']}))
    return data


def read_rows(file):
    return np.array([ln.split() for ln in Path(file).read_text().splitlines()], float).reshape(-1, 5)


def test_tiling_keeps_clips_and_drops_by_the_60_percent_rule(tmp_path):
    data = make_dataset(tmp_path / 'src')
    out = tmp_path / 'tiles'
    done = tiles.make_tiles(data, out, tile=32, stride=32, min_visible=0.6)
    assert done['counts']['train'] == dict(images=2, tiles=8, boxes=6, kept=4, dropped=2, label_rows=4)
    assert len(list((out / 'images' / 'train').glob('*.png'))) == 8
    assert cv2.imread(str(out / 'images' / 'train' / 'im0_x0y0.png'), cv2.IMREAD_UNCHANGED).shape == (32, 32)
    np.testing.assert_allclose(read_rows(out / 'labels' / 'train' / 'im0_x0y0.txt'),
                               [[1, 9 / 32, 9 / 32, 10 / 32, 10 / 32]], atol=1e-6)
    np.testing.assert_allclose(read_rows(out / 'labels' / 'train' / 'im0_x32y32.txt'),
                               [[2, 6 / 32, 13 / 32, 12 / 32, 10 / 32]], atol=1e-6)  # x 32-44 -> 0-12
    assert read_rows(out / 'labels' / 'train' / 'im0_x32y0.txt').size == 0  # the 50% box is in no tile
    assert read_rows(out / 'labels' / 'train' / 'im0_x0y32.txt').size == 0
    d = yaml.safe_load((out / 'tiles.yaml').read_text())
    assert (d['train'], d['val'], d['nc']) == ('images/train', 'images/val', 4)
    assert not (tmp_path / 'tiles.partial').exists()

    # a lower threshold keeps the half-visible box (in both tiles)
    lenient = tiles.make_tiles(data, tmp_path / 'lenient', tile=32, stride=32, min_visible=0.5)
    assert lenient['counts']['train']['dropped'] == 0


def test_tiling_is_idempotent_and_refuses_other_settings(tmp_path, capsys):
    data = make_dataset(tmp_path / 'src')
    out = tmp_path / 'tiles'
    first = tiles.make_tiles(data, out, tile=32, stride=32, min_visible=0.6)
    stamp = (out / 'labels' / 'train' / 'im0_x0y0.txt').stat().st_mtime_ns
    assert tiles.make_tiles(data, out, tile=32, stride=32, min_visible=0.6) == first
    assert 'complete, skipping' in capsys.readouterr().out
    assert (out / 'labels' / 'train' / 'im0_x0y0.txt').stat().st_mtime_ns == stamp
    with pytest.raises(tiles.DatasetError, match='other settings'):
        tiles.make_tiles(data, out, tile=16, stride=16, min_visible=0.6)


def test_tile_grid_adds_an_edge_aligned_last_tile():
    assert tiles.tile_starts(640, 320, 320) == [0, 320]
    assert tiles.tile_starts(700, 320, 320) == [0, 320, 380]
    with pytest.raises(tiles.DatasetError):
        tiles.tile_starts(100, 320, 320)


def test_labelled_split_is_fixed_by_source_image_and_hides_labels(tmp_path):
    data = make_dataset(tmp_path / 'src', n_train=6)
    out = tmp_path / 'tiles'
    tiles.make_tiles(data, out, tile=32, stride=32, min_visible=0.6)
    labelled, unlabelled = tiles.split_labelled(out, 0.5, seed=0)
    assert (len(labelled), len(unlabelled)) == (12, 12)
    lab_src = {tiles.source_image(t) for t in labelled}
    unl_src = {tiles.source_image(t) for t in unlabelled}
    assert len(lab_src) == 3 and not lab_src & unl_src  # whole images on one side
    assert not (out / 'labels' / 'unlabelled_f50_s0').exists()
    listed = (out / 'splits' / 'labelled_f50_s0.txt').read_text().split()
    assert sorted(str((out / 'splits' / p).resolve()) for p in listed) == sorted(labelled)
    again = tiles.split_labelled(out, 0.5, seed=0)
    assert again == (labelled, unlabelled)
    other = tiles.split_labelled(out, 0.5, seed=1)[0]
    assert len(other) == 12  # another seed: another split of the same size
    d = yaml.safe_load((out / 'tiles_labelled_f50_s0.yaml').read_text())
    assert d['train'] == 'splits/labelled_f50_s0.txt'



def run_script(tmp_path, **env):
    full = {**os.environ, 'DRY_RUN': '1', 'SHARED': str(tmp_path / 'shared'),
            'PROJECT': str(tmp_path / 'runs'), **env}
    full = {k: v for k, v in full.items() if v is not None}  # None: leave the variable unset
    return subprocess.run(['bash', str(SCRIPT)], env=full, capture_output=True, text=True, cwd=tmp_path)


def planned(stdout):
    """{row: the command line under its '== row' header}"""
    lines = stdout.splitlines()
    return {ln.split()[1]: lines[i + 1].strip() for i, ln in enumerate(lines)
            if ln.startswith('== ') and ln.split()[1] not in ('data', 'compare', 'full-image', 'pseudo-labels')}


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_dry_run_prints_one_command_per_row_and_runs_nothing(tmp_path):
    r = run_script(tmp_path, EPOCHS='30', TEACHER='t.pt')  # OFF_LAST defaults to EPOCHS / 10; no teacher yet
    assert r.returncode == 0, r.stderr
    rows = planned(r.stdout)
    kd = [f'kd_{m}_s{s}' for m in ('output', 'kl', 'mse', 'cosine', 'cwd', 'off_last', 'cwd_w1')
          for s in (0, 1)] + ['kd_w0.5_s0', 'kd_w0.5_s1']
    assert list(rows) == ['teacher', 'base_s0', 'base_s1', 'base_s2'] + kd
    assert rows['teacher'].startswith('python3 train.py') and '--cfg yolov5s.yaml' in rows['teacher']
    assert '--seed 2' in rows['base_s2'] and 'yolov5n.pt' in rows['base_s2']
    assert '--d_feature cwd' in rows['kd_cwd_s1'] and '--seed 1' in rows['kd_cwd_s1']
    assert '--d_kl' in rows['kd_kl_s0'] and '--d_off_last 3' in rows['kd_off_last_s0']
    assert '--d_feature cwd --d_feature_weight 1' in rows['kd_cwd_w1_s1']
    assert '--d_weight 0.5 ' in rows['kd_w0.5_s1'] and '--seed 1' in rows['kd_w0.5_s1']
    # output-only rows turn the default KL off; every other KD row keeps the defaults
    assert all('--no-d_kl' in rows[r] for r in ('kd_output_s0', 'kd_w0.5_s1'))
    assert sum('--no-d_kl' in c for c in rows.values()) == 4
    assert all('--imgsz 320' in c and '--device cpu' in c and '--epochs' in c for c in rows.values())
    assert 'tiles320_sub1000_s0.yaml' in rows['base_s0'] and '--epochs 30' in rows['base_s0']
    assert r.stdout.count('compare.py') == 4  # both metrics on the tiles, then on the full 640-px images
    assert f"benchmarks/revalidate.py {tmp_path / 'runs'} t.pt --data {tmp_path / 'shared'}/datasets/deeppcb/" \
           "deeppcb.yaml --imgsz 640 --name full640" in r.stdout  # the runs and the teacher, validated again
    assert '--val full640 --md' in r.stdout and '--teacher-map' not in r.stdout  # no teacher json yet
    assert not (tmp_path / 'runs').exists()
    default = run_script(tmp_path, PROJECT=None, EPOCHS='97', ROW='teacher base_s0').stdout  # no such runs here
    assert '--project runs/deeppcb_cpu_e97 ' in planned(default)['base_s0']  # one folder per schedule
    assert '== teacher: weights/deeppcb_teacher_yolov5s_cpu.pt exists, skipping' in default  # the committed one

    gpu_out = run_script(tmp_path, PROTOCOL='gpu', ISSUE='14').stdout
    assert 'revalidate.py' not in gpu_out and gpu_out.count('compare.py') == 2  # already on the full images
    gpu = planned(gpu_out)
    assert list(gpu) == ['lab_base_s0', 'lab_base_s1', 'lab_base_s2', 'lab_kd_s0', 'lab_kd_s1', 'lab_unlab_kd_s0',
                         'lab_unlab_kd_s1', 'lab_unlab_pseudo_s0', 'lab_unlab_pseudo_s1', 'lab_kd_2x_s0', 'lab_kd_2x_s1',
                         'lab_unlab_kd_half_s0', 'lab_unlab_kd_half_s1', 'lab_unlab_pseudo_half_s0',
                         'lab_unlab_pseudo_half_s1']
    assert '--epochs 100' in gpu['lab_kd_2x_s0'] and '--epochs 50' in gpu['lab_kd_s0']
    assert '--epochs 25 ' in gpu['lab_unlab_pseudo_half_s1'] and '--d_pseudo 0.5' in gpu['lab_unlab_pseudo_half_s1']
    assert '--d_unlabeled' in gpu['lab_unlab_kd_half_s0'] and '--d_pseudo' not in gpu['lab_unlab_kd_half_s0']
    assert all('--imgsz 640' in c and '--batch-size 64' in c for c in gpu.values())
    assert 'labelled_f50_s0.yaml' in gpu['lab_kd_s0'] and '--d_unlabeled' not in gpu['lab_kd_s0']
    assert 'deeppcb_teacher_yolov5s_gpu.pt' in gpu['lab_kd_s0']  # SSL_TEACHER=full: the issue-16 teacher
    assert '--d_unlabeled datasets/deeppcb_640/images/unlabelled_f50_s0' in gpu['lab_unlab_kd_s1']
    assert '--d_pseudo 0.5' in gpu['lab_unlab_pseudo_s0'] and '--d_pseudo' not in gpu['lab_unlab_kd_s0']
    lab = planned(run_script(tmp_path, ISSUE='14', SSL_TEACHER='lab').stdout)
    assert list(lab)[0] == 'teacher_lab' and 'deeppcb_teacher_lab_yolov5s_cpu.pt' in lab['lab_unlab_kd_s0']


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_row_selection(tmp_path):
    r = run_script(tmp_path, ROW='kd_cwd base_s1')
    assert list(planned(r.stdout)) == ['kd_cwd_s0', 'kd_cwd_s1', 'base_s1']
    assert 'compare.py' not in r.stdout
    bad = run_script(tmp_path, ROW='kd_typo')
    assert bad.returncode == 2 and "unknown row 'kd_typo'" in bad.stderr
    weights = run_script(tmp_path, D_WEIGHTS='1 4', ROW='kd_w4_s0 kd_w1')
    assert list(planned(weights.stdout)) == ['kd_w4_s0', 'kd_w1_s0', 'kd_w1_s1']
    assert '--d_weight 4 ' in planned(weights.stdout)['kd_w4_s0']
    nan = run_script(tmp_path, D_WEIGHTS='two')
    assert nan.returncode == 2 and "D_WEIGHTS must hold numbers, got 'two'" in nan.stderr
    ssl = run_script(tmp_path, ISSUE='14', ROW='lab_unlab_kd')
    assert ssl.returncode == 0 and list(planned(ssl.stdout)) == ['lab_unlab_kd_s0', 'lab_unlab_kd_s1']


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_prepare_only_writes_the_data_and_trains_nothing(tmp_path):
    r = run_script(tmp_path, ISSUE='14', PREPARE_ONLY='1')
    assert r.returncode == 0, r.stderr
    assert 'deeppcb_tiles.py' in r.stdout and '--labelled-fraction 0.5' in r.stdout
    assert planned(r.stdout) == {} and 'compare.py' not in r.stdout


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_needs_only_names_the_teacher_file_each_row_reads(tmp_path):
    r = run_script(tmp_path, NEEDS_ONLY='1', TEACHER='t.pt', ROW='base_s0 kd_kl_s0 teacher')
    assert r.returncode == 0 and r.stdout.splitlines() == ['', 't.pt', '']
    round2 = run_script(tmp_path, NEEDS_ONLY='1', TEACHER_ROUND='2', ROW='teacher').stdout
    assert round2.splitlines() == ['weights/deeppcb_teacher_yolov5s_cpu.pt']  # it trains the round-1 file further
    lab = run_script(tmp_path, NEEDS_ONLY='1', ISSUE='14', SSL_TEACHER='lab', ROW='lab_base_s0 lab_kd_s0').stdout
    assert lab.splitlines() == ['', 'weights/deeppcb_teacher_lab_yolov5s_cpu.pt']
    bad = run_script(tmp_path, NEEDS_ONLY='1', ROW='kd_typo')
    assert bad.returncode == 2 and "unknown row 'kd_typo'" in bad.stderr


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_teacher_round_2_trains_the_committed_teacher_further(tmp_path):
    r = run_script(tmp_path, TEACHER_ROUND='2', TEACHER='t2.pt')  # t2.pt: not trained yet
    assert r.returncode == 0, r.stderr
    rows = planned(r.stdout)
    assert list(rows)[:3] == ['teacher', 'kd_output_s0', 'kd_output_s1']  # baselines need no teacher: none
    assert "train.py --weights weights/deeppcb_teacher_yolov5s_cpu.pt --cfg '' " in rows['teacher']
    assert '--epochs 30 ' in rows['teacher'] and '--seed 0' in rows['teacher']
    assert all('--t_weights t2.pt' in c for row, c in rows.items() if row != 'teacher')
    assert f"compare.py {tmp_path / 'runs'} runs/deeppcb_cpu_e12/base_s* --seeds" in r.stdout  # round-1 baselines
    default = run_script(tmp_path, TEACHER_ROUND='2', PROJECT=None, EPOCHS='97', ROW='kd_kl_s0').stdout  # no runs
    assert '--t_weights weights/deeppcb_teacher2_yolov5s_cpu.pt' in default
    assert '--project runs/deeppcb_cpu_e97_t2 ' in default  # its own folder: KD rows of two teachers never mix
    issue14 = run_script(tmp_path, TEACHER_ROUND='2', ISSUE='14')
    assert issue14.returncode == 2 and 'TEACHER_ROUND=2 is for ISSUE=16' in issue14.stderr

    # a teacher run that finished but was not saved (interrupted after training) is saved, not retrained
    csv = tmp_path / 'runs' / 'teacher' / 'results.csv'
    csv.parent.mkdir(parents=True)
    csv.write_text('epoch\n' + ''.join(f'{e}\n' for e in range(30)))
    done = run_script(tmp_path, TEACHER_ROUND='2', TEACHER='t2.pt', ROW='teacher').stdout
    assert '== teacher: done (30 epochs), skipping' in done and "/teacher/weights/best.pt', 't2.pt'" in done


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_teacher_round_gpu_distils_from_the_gpu_teacher_on_the_tiles(tmp_path):
    r = run_script(tmp_path, TEACHER_ROUND='gpu', PROJECT=None, EPOCHS='97')  # no runs of that schedule here
    assert r.returncode == 0, r.stderr
    rows = planned(r.stdout)
    assert list(rows)[:2] == ['kd_output_s0', 'kd_output_s1']  # nothing to train first, no baselines again
    assert all('--t_weights weights/deeppcb_teacher_yolov5s_gpu.pt' in c and '--imgsz 320' in c for c in rows.values())
    assert '--project runs/deeppcb_cpu_e97_tgpu ' in rows['kd_kl_s0']
    assert 'compare.py runs/deeppcb_cpu_e97_tgpu runs/deeppcb_cpu_e97/base_s* --seeds' in r.stdout
    ssl = run_script(tmp_path, TEACHER_ROUND='gpu', ISSUE='14', PROJECT=None, EPOCHS='97')
    assert list(planned(ssl.stdout))[0] == 'lab_kd_s0'  # the labelled-half baselines are round 1's
    assert '--project runs/deeppcb_cpu_e97_ssl_tgpu ' in planned(ssl.stdout)['lab_unlab_pseudo_s1']
    assert 'runs/deeppcb_cpu_e97/base_s* runs/deeppcb_cpu_e97_ssl/lab_base_s* --seeds' in ssl.stdout
    for bad in (dict(PROTOCOL='gpu'), dict(ISSUE='14', SSL_TEACHER='lab')):
        b = run_script(tmp_path, TEACHER_ROUND='gpu', **bad)
        assert b.returncode == 2 and 'TEACHER_ROUND' in b.stderr
