"""compare.py on fake run folders whose results.csv / opt.yaml values are chosen here."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import compare

ROOT = Path(__file__).resolve().parents[1]
COMMON = {'data': 'data/synth.yaml', 'cfg': 'yolov5n.yaml', 'weights': '', 'epochs': 3, 'imgsz': 96}


def make_run(parent, name, best, opt, elapsed=None, padded=False):
    """A run folder: 3 epochs rising to `best` mAP@0.5:0.95 (mAP@0.5 = 2x), opt.yaml from `opt`."""
    d = parent / name
    (d / 'weights').mkdir(parents=True)
    curve = [best * 0.5, best * 0.9, best]
    cols = ['epoch', 'train/box_loss', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95']
    cols += ['x/elapsed_s'] if elapsed is not None else []
    lines = [','.join(f'{c:>20}' if padded else c for c in cols)]
    for i, m in enumerate(curve):
        row = [i, 0.1, 2 * m, m] + ([elapsed * (i + 1) / 3] if elapsed is not None else [])
        lines.append(','.join(str(v) for v in row))
    (d / 'results.csv').write_text('\n'.join(lines) + '\n')
    (d / 'opt.yaml').write_text(yaml.safe_dump({**COMMON, **opt}))
    return d


@pytest.fixture
def runs(tmp_path):
    """Two baselines (0.200, 0.210: mean 0.205, spread 0.010), a teacher (0.305) and 4 distilled runs."""
    p = tmp_path / 'sweep'
    make_run(p, 'base_s0', 0.200, {}, elapsed=75, padded=True)
    make_run(p, 'base_s1', 0.210, {'seed': 1})
    teacher = make_run(p, 'teacher', 0.305, {'cfg': 'yolov5s.yaml'})
    (teacher / 'weights' / 'best.pt').write_bytes(b'not a checkpoint')
    t = {'t_weights': [str(teacher / 'weights' / 'best.pt')], 'd_output': True, 'd_weight': 10.0}
    make_run(p, 'kd_good', 0.255, t, elapsed=3700)
    make_run(p, 'kd_lost', 0.180, {**t, 'd_output': False, 'd_kl': True, 'd_alpha': 1.0, 'd_temperature': 4.0})
    make_run(p, 'kd_noise', 0.209, {**t, 'd_feature': 'cwd', 'd_standardize': True, 'd_feature_weight': 2.0})
    make_run(p, 'kd_other_size', 0.300, {**t, 'imgsz': 128})
    return p


def by_run(rows):
    return {r['run']: r for r in rows}


def test_table_labels_and_values(runs, capsys):
    rows = by_run(compare.run([runs], costs=False))
    assert rows['base_s0']['teacher'] == '-' and rows['base_s0']['method'] == 'none'
    assert rows['base_s0']['mAP@0.5:0.95'] == pytest.approx(0.200)  # padded header still read
    assert rows['base_s0']['mAP@0.5'] == pytest.approx(0.400)
    assert rows['base_s0']['wall time'] == pytest.approx(75) and rows['base_s1']['wall time'] is None
    assert rows['kd_good']['teacher'] == 'teacher' and rows['kd_good']['student'] == 'yolov5n'
    assert rows['kd_good']['method'] == 'output' and rows['kd_good']['weights'] == 'dw=10.0'
    assert rows['kd_lost']['method'] == 'kl' and rows['kd_lost']['weights'] == 'a=1.0 T=4.0'
    assert rows['kd_noise']['method'] == 'output+feature:cwd+std'
    assert rows['kd_noise']['weights'] == 'dw=10.0 fw=2.0'
    assert rows['teacher']['student'] == 'yolov5s' and rows['kd_good']['epochs'] == 3
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith('|')]
    assert len(table) == 2 + 7 and all(line.count('|') == len(compare.COLUMNS) + 1 for line in table)
    kd_line = next(line for line in table if 'kd_good' in line)
    assert '1h01m' in kd_line and '0.255' in kd_line and '0.510' in kd_line


def test_baseline_verdicts_and_gap_recovered(runs):
    rows = by_run(compare.run([runs], costs=False))
    # noise = spread of the two baselines = 0.010; baseline mean 0.205; teacher 0.305
    assert rows['kd_good']['vs baseline'] == '+0.050'
    assert rows['kd_good']['gap recovered'] == pytest.approx(0.05 / 0.10)
    assert rows['kd_lost']['vs baseline'] == 'LOST -0.025'
    assert rows['kd_lost']['gap recovered'] == pytest.approx(-0.25)
    assert rows['kd_noise']['vs baseline'].startswith('within noise')
    assert rows['kd_other_size']['vs baseline'] == 'no baseline'  # imgsz differs: nothing to match
    assert rows['base_s0']['vs baseline'] == 'baseline'
    assert rows['teacher']['vs baseline'] == '-'  # trained beside the students, compared with nothing
    md = compare.to_markdown(list(rows.values()))
    assert '+50%' in md and '-25%' in md and 'LOST -0.025' in md


def test_student_label_of_an_official_checkpoint(runs):
    """A checkpoint outside a run folder is named by its stem, a run's best.pt by its run."""
    assert compare.weights_label('../shared/weights/yolov5n.pt') == 'yolov5n'
    assert compare.weights_label('runs/sweep/teacher/weights/best.pt') == 'teacher'
    assert compare.student_label({'cfg': '', 'weights': '/data/shared/weights/yolov5n.pt'}) == 'yolov5n'


def test_default_feature_weight_is_shown_as_its_value():
    from distill.losses import FEATURE_WEIGHTS
    opt = {'t_weights': ['t.pt'], 'd_output': False, 'd_feature': 'cwd', 'd_feature_weight': None}
    assert compare.gains_label(opt) == f"fw={FEATURE_WEIGHTS['cwd']}"


def test_noise_and_teacher_map_overrides(runs):
    rows = by_run(compare.run([runs], noise=0.03, teacher_map=0.405, costs=False))
    assert rows['kd_lost']['vs baseline'].startswith('within noise')
    assert rows['kd_good']['vs baseline'] == '+0.050'  # still beyond the wider band
    assert rows['kd_good']['gap recovered'] == pytest.approx(0.05 / 0.2)


def test_single_baseline_uses_default_noise(runs):
    rows = by_run(compare.run([runs], baseline=['base_s0'], costs=False))
    # baseline 0.200, default noise 0.005: kd_noise (+0.009) now beats it, kd_lost is -0.020
    assert rows['kd_noise']['vs baseline'] == '+0.009'
    assert rows['kd_lost']['vs baseline'] == 'LOST -0.020'
    assert rows['kd_other_size']['vs baseline'] == '+0.100'  # explicit baseline applies to every run


def test_csv_output(runs, tmp_path):
    out = tmp_path / 'table.csv'
    compare.run([runs], csv_file=out, costs=False)
    with open(out) as f:
        rows = {r['run']: r for r in csv.DictReader(f)}
    assert len(rows) == 7
    assert float(rows['kd_good']['mAP@0.5:0.95']) == pytest.approx(0.255)
    assert float(rows['kd_good']['wall_time_s']) == pytest.approx(3700)
    assert float(rows['kd_lost']['delta']) == pytest.approx(-0.025)
    assert rows['kd_lost']['vs baseline'] == 'LOST -0.025' and rows['base_s1']['wall_time_s'] == ''


def test_plot_written(runs, tmp_path):
    png = tmp_path / 'curves.png'
    compare.run([runs], plot=png, costs=False)
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000


def test_params_and_gflops_from_checkpoint(tmp_path):
    from models.checkpoint import model_checkpoint_fields, save_checkpoint
    from models.yolo import Model

    model = Model('yolov5n.yaml', nc=2)
    for name, imgsz in (('small', 64), ('large', 128)):
        d = make_run(tmp_path, name, 0.1, {'imgsz': imgsz})
        save_checkpoint(d / 'weights' / 'best.pt', model_checkpoint_fields(model))
    rows = by_run(compare.run([tmp_path]))
    assert rows['small']['params'] == sum(p.numel() for p in model.parameters())
    assert rows['large']['GFLOPs'] == pytest.approx(4 * rows['small']['GFLOPs'], rel=1e-6)


def test_bad_input(runs, tmp_path):
    with pytest.raises(ValueError, match='mAP_0.5'):
        compare.run([runs], metric='mAP_0.75', costs=False)
    with pytest.raises(FileNotFoundError, match='no such run'):
        compare.run([tmp_path / 'missing'])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no runs'):
        compare.run([tmp_path / 'empty'])


def test_cli(runs):
    ok = subprocess.run([sys.executable, 'compare.py', str(runs), '--no-costs', '--metric', 'mAP_0.5'],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert 'LOST -0.050' in ok.stdout  # kd_lost at mAP@0.5: 0.36 vs mean 0.41, noise 0.02
    bad = subprocess.run([sys.executable, 'compare.py', str(runs / 'nope')], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and 'no such run folder' in bad.stderr and 'Traceback' not in bad.stderr


def test_seed_groups_give_mean_spread_and_a_verdict_on_the_mean(runs, tmp_path, capsys):
    teacher_pt = str(runs / 'teacher' / 'weights' / 'best.pt')
    t = {'t_weights': [teacher_pt], 'd_output': True, 'd_weight': 10.0}
    make_run(runs, 'kd_good_s1', 0.265, {**t, 'seed': 1})
    make_run(runs, 'kd_unl_s0', 0.230, {**t, 'd_unlabeled': ['u/'], 'd_pseudo': 0.5})
    md = tmp_path / 'table.md'
    compare.run([runs], costs=False, seeds=True, md=md)
    groups = {r['group']: r for r in compare.build_group_rows(compare.load_runs(compare.find_runs([runs])))}
    assert groups['base']['seeds'] == 2 and groups['base']['mAP_0.5:0.95'] == pytest.approx((0.205, 0.010))
    good = groups['kd_good']  # kd_good (seed 0) and kd_good_s1: mean 0.260 vs baselines' 0.205, noise 0.010
    assert good['seeds'] == 2 and good['mAP_0.5:0.95'] == pytest.approx((0.260, 0.010))
    assert good['delta'] == pytest.approx(0.055) and good['vs baseline'] == '+0.055'
    assert good['gap recovered'] == pytest.approx(0.055 / 0.100)
    assert groups['kd_noise']['vs baseline'].startswith('within noise')
    assert groups['kd_unl']['method'] == 'output +unlabeled +pseudo 0.5'
    # paired by seed: kd_good (no seed key: 0) - base_s0 = 0.055, kd_good_s1 - base_s1 = 0.055
    assert good['paired'] == pytest.approx([0.055, 0.055])
    assert compare.paired_text(good['paired']) == '+0.055 (2 of 2 > 0)' and compare.paired_text([]) == '-'
    at_05 = {r['group']: r for r in compare.build_group_rows(compare.load_runs(compare.find_runs([runs])), 'mAP_0.5')}
    assert at_05['kd_good']['delta'] == pytest.approx(0.110)  # any --metric, not only the two in the table
    loaded = compare.load_runs(compare.find_runs([runs]))
    by_loss = {r['group']: r for r in compare.build_group_rows(loaded, 'train/box_loss')}
    assert by_loss['kd_good']['delta'] == pytest.approx(0.0)  # a column outside the table (was a KeyError)
    out = capsys.readouterr().out
    assert 'Seed groups' in out and '| kd_good ' in out and '0.260 ± 0.010' in out
    assert '0.260 ± 0.010' in md.read_text()  # the Markdown file holds both tables


def test_seed_group_names_leave_out_folders_unless_two_groups_share_a_name(tmp_path):
    """Runs are told apart as folder/name; a group is named by its runs without the seed, and gets its
    folders only when another group has the same name."""
    make_run(tmp_path / 'a', 'base_s0', 0.20, {})
    make_run(tmp_path / 'b', 'base_s0', 0.22, {'data': 'data/other.yaml'})
    make_run(tmp_path / 'b', 'base_s1', 0.24, {'data': 'data/other.yaml', 'seed': 1})
    loaded = compare.load_runs(compare.find_runs([tmp_path / 'a', tmp_path / 'b']))
    assert sorted(r['name'] for r in loaded) == ['a/base_s0', 'b/base_s0', 'base_s1']
    groups = compare.build_group_rows(loaded)
    assert sorted((g['group'], g['seeds']) for g in groups) == [('base (a)', 1), ('base (b)', 2)]  # one label: folders
    make_run(tmp_path / 'c', 'kd_s0', 0.3, {'t_weights': ['t.pt'], 'd_output': True})
    make_run(tmp_path / 'd', 'kd_s1', 0.3, {'t_weights': ['t.pt'], 'd_output': True, 'seed': 1})
    groups = compare.build_group_rows(compare.load_runs(compare.find_runs([tmp_path / 'c', tmp_path / 'd'])))
    assert [(g['group'], g['seeds']) for g in groups] == [('kd', 2)]  # seeds from two folders, no folder in the name


def test_val_metrics_replace_results_csv(runs):
    """--val NAME: every metric (table, verdicts, gap, seed groups) comes from <run>/val_NAME.json."""
    import json
    values = {'base_s0': 0.30, 'base_s1': 0.34, 'teacher': 0.50, 'kd_good': 0.41, 'kd_lost': 0.20,
              'kd_noise': 0.33, 'kd_other_size': 0.6}
    for name, v in values.items():
        (runs / name / 'val_full.json').write_text(json.dumps({'mAP_0.5': 2 * v, 'mAP_0.5:0.95': v, 'imgsz': 640}))
    rows = by_run(compare.run([runs], costs=False, val='full'))
    assert rows['base_s1']['mAP@0.5:0.95'] == 0.34 and rows['kd_good']['mAP@0.5'] == 0.82
    assert rows['kd_good']['delta'] == pytest.approx(0.09) and rows['kd_good']['vs baseline'] == '+0.090'
    assert rows['kd_good']['gap recovered'] == pytest.approx(0.09 / 0.18)  # teacher 0.50 from its own json
    assert rows['kd_lost']['vs baseline'] == 'LOST -0.120' and rows['kd_noise']['vs baseline'].startswith('within')
    groups = {r['group']: r for r in compare.build_group_rows(compare.load_runs(compare.find_runs([runs]), 'full'))}
    assert groups['base']['mAP_0.5:0.95'] == pytest.approx((0.32, 0.04))
    with pytest.raises(ValueError, match='not in .*val_full.json'):
        compare.run([runs], costs=False, val='full', metric='train/box_loss')
    (runs / 'kd_lost' / 'val_full.json').unlink()
    with pytest.raises(FileNotFoundError, match='revalidate.py'):
        compare.run([runs], costs=False, val='full')
