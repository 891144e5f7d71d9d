"""Compare training runs (teacher, baselines, distilled students) in one table, plus a curve plot.

Usage:
    python compare.py                                   # every run under runs/train
    python compare.py runs/sweep_demo --plot sweep.png  # a sweep folder (runs found recursively)
    python compare.py runs/train/exp* --csv table.csv --metric mAP_0.5
    python compare.py runs/sweep_demo --teacher-map 0.412 --noise 0.01
    python compare.py runs/deeppcb_cpu --seeds          # + mean and spread of runs differing only in seed
    python compare.py runs/deeppcb_cpu_e12 --val full640  # metrics of benchmarks/revalidate.py --name full640
Each run folder needs results.csv and opt.yaml (as train.py / train_distillation.py write them);
params and GFLOPs come from weights/best.pt (or last.pt) when present.

A distilled run (opt.yaml has t_weights) is compared with its matching baselines: train.py runs with
the same data, student (cfg and initial weights), epochs and image size. `vs baseline` is the
distilled run's best metric minus the mean of the baselines' best; beyond the noise (--noise, else
the max-min spread of >= 2 matching baselines, else 0.005) a loss is flagged LOST. With --val NAME every
metric comes from <run>/val_NAME.json (the same weights validated again by benchmarks/revalidate.py, e.g. on
other images or at another size) instead of results.csv.
`gap recovered` = (kd - baseline) / (teacher - baseline), with the teacher's metric from
--teacher-map or from a run in the set whose weights/best.pt is the distilled run's t_weights.
"""
import argparse
import csv
import glob
import json
import os
import re
from pathlib import Path

import pandas as pd
import yaml

from distill.losses import FEATURE_WEIGHTS
from utils.cli import UserError

ROOT = Path(__file__).resolve().parent
DEFAULT_NOISE = 0.005
COLUMNS = ['run', 'teacher', 'student', 'method', 'weights', 'mAP@0.5', 'mAP@0.5:0.95', 'epochs',
           'wall time', 'params', 'GFLOPs', 'vs baseline', 'gap recovered']


# ----------------------------------------------------------------------------- reading runs
def find_runs(paths):
    """Run folders (those holding results.csv) named by the paths, globs or parent folders given."""
    found = []
    for p in paths:
        matches = sorted(glob.glob(str(p))) if any(c in str(p) for c in '*?[') else [str(p)]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise FileNotFoundError(f'{p}: no such run folder')
        for m in map(Path, matches):
            if (m / 'results.csv').is_file():
                found.append(m)
            elif m.is_dir():
                found.extend(sorted(f.parent for f in m.rglob('results.csv')))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise FileNotFoundError(f'no runs (folders with results.csv) found in {list(map(str, paths))}')
    return unique


def read_results(run_dir):
    df = pd.read_csv(run_dir / 'results.csv')
    df.columns = [c.strip() for c in df.columns]  # official YOLOv5 pads its column names
    return df


def read_opt(run_dir):
    file = run_dir / 'opt.yaml'
    if not file.is_file():
        print(f'WARNING: {run_dir} has no opt.yaml: its teacher/student/method are unknown')
        return {}
    with open(file) as f:
        return yaml.safe_load(f) or {}


def read_val(run_dir, name):
    """The metrics benchmarks/revalidate.py --name NAME measured for this run."""
    file = run_dir / f'val_{name}.json'
    if not file.is_file():
        raise FileNotFoundError(f'{file} not found: run python benchmarks/revalidate.py {run_dir} --data DATA '
                                f'--name {name} first, or drop --val')
    return json.loads(file.read_text())


def load_runs(dirs, val=None):
    """Each run's opt and results; with val, also the metrics of its val_<val>.json (they then rule)."""
    runs = [{'dir': d, 'opt': read_opt(d), 'results': read_results(d), 'val': read_val(d, val) if val else None}
            for d in dirs]
    names = [r['dir'].name for r in runs]
    for r in runs:  # two sweeps can both hold 'exp': then show parent/name
        r['name'] = r['dir'].name if names.count(r['dir'].name) == 1 else f"{r['dir'].parent.name}/{r['dir'].name}"
    return runs


def metric_column(df_columns, metric):
    """Resolve 'mAP_0.5:0.95' / 'metrics/mAP_0.5:0.95' to the results.csv column name."""
    for c in (metric, f'metrics/{metric}'):
        if c in df_columns:
            return c
    options = [c.replace('metrics/', '') for c in df_columns if c.startswith('metrics/')]
    raise UserError(f'--metric {metric} is not a results.csv column; choose from {options}')


def best_value(run, metric):
    if run.get('val') is not None:  # one validation of the final weights, not a per-epoch column
        return run['val'].get(metric.replace('metrics/', ''))
    col = metric_column(run['results'].columns, metric)
    values = pd.to_numeric(run['results'][col], errors='coerce').dropna()
    return float(values.max()) if len(values) else None


# ----------------------------------------------------------------------------- describing runs
def teacher_weights(opt):
    t = opt.get('t_weights') or []
    return [str(x) for x in (t if isinstance(t, list) else [t])]


def is_distilled(run):
    return bool(teacher_weights(run['opt']))


def weights_label(path):
    """runs/x/teacher/weights/best.pt -> 'teacher' (the run's name: every run writes a best.pt); other
    files -> their stem (../shared/weights/yolov5n.pt -> 'yolov5n')."""
    p = Path(path)
    in_run = p.name in ('best.pt', 'last.pt') and p.parent.name == 'weights' and len(p.parents) > 1
    return p.parents[1].name if in_run else p.stem


def teacher_label(opt):
    return '+'.join(weights_label(t) for t in teacher_weights(opt)) or '-'


def student_label(opt):
    cfg, init = opt.get('cfg') or '', opt.get('weights') or ''
    if not cfg:
        return weights_label(init) if init else '?'
    return f'{Path(cfg).stem} ({weights_label(init)})' if init else Path(cfg).stem


def method_label(opt):
    """none / output / kl / output+feature:cwd+std ..., from the distillation flags in opt.yaml."""
    if not teacher_weights(opt):
        return 'none'
    parts = []
    if opt.get('d_output', True):
        parts.append('output')
    if opt.get('d_kl'):
        parts.append('kl')
    if opt.get('d_feature'):
        parts.append(f"feature:{opt['d_feature']}" + ('+std' if opt.get('d_standardize') else ''))
    label = '+'.join(parts) or 'none'
    if opt.get('d_unlabeled'):
        label += ' +unlabeled' + (f" +pseudo {opt['d_pseudo']}" if opt.get('d_pseudo') is not None else '')
    return label + (f" (off last {opt['d_off_last']})" if opt.get('d_off_last') else '')


def gains_label(opt):
    """The gains that matter for the method: dw (output), alpha/T (kl), fw (feature)."""
    if not teacher_weights(opt):
        return '-'
    parts = []
    if opt.get('d_output', True):
        parts.append(f"dw={opt.get('d_weight', '?')}")
    if opt.get('d_kl'):
        parts.append(f"a={opt.get('d_alpha', '?')} T={opt.get('d_temperature', '?')}")
    if opt.get('d_feature'):
        fw = opt.get('d_feature_weight', '?')  # None: the method's default weight, shown as its value
        parts.append(f"fw={FEATURE_WEIGHTS.get(opt['d_feature'], '?') if fw is None else fw}")
    return ' '.join(parts) or '-'


def match_key(opt):
    """Runs with equal keys are comparable: same data, student, epochs and image size."""
    data = os.path.normpath(str(opt.get('data', '?')))
    return data, student_label(opt), opt.get('epochs'), opt.get('imgsz')


def model_cost(run, cache):
    """(params, GFLOPs at the run's imgsz) from weights/best.pt or last.pt; (None, None) if absent."""
    ckpt = next((f for f in (run['dir'] / 'weights' / n for n in ('best.pt', 'last.pt')) if f.is_file()), None)
    if ckpt is None:
        return None, None
    from models.checkpoint import load_checkpoint  # torch only when a checkpoint is there
    from models.yolo import Model, model_summary

    try:
        model_yaml = load_checkpoint(ckpt)['model_yaml']
    except Exception as e:  # one unreadable checkpoint should not hide the whole comparison
        print(f'WARNING: {ckpt}: cannot read the model ({type(e).__name__}: {e}); params/GFLOPs n/a')
        return None, None
    imgsz = int(run['opt'].get('imgsz') or 640)
    arch = yaml.safe_dump(model_yaml, sort_keys=True)
    if arch not in cache:  # a sweep has many runs of one student: build each model once
        cache[arch] = Model(model_yaml)
    if (arch, imgsz) not in cache:
        s = model_summary(cache[arch], imgsz)
        cache[arch, imgsz] = s['params'], s['gflops']
    return cache[arch, imgsz]


# ----------------------------------------------------------------------------- comparisons
def same_file(a, b):
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.normpath(a) == os.path.normpath(b)


def group_noise(baseline_values, noise):
    """The noise band: --noise, else the baselines' spread (max - min) when >= 2, else the default."""
    if noise is not None:
        return noise, '--noise'
    if len(baseline_values) >= 2:
        return max(baseline_values) - min(baseline_values), f'spread of {len(baseline_values)} baselines'
    return DEFAULT_NOISE, 'default'


def verdict(delta, noise):
    if delta < -noise:
        return f'LOST {delta:+.3f}'
    if delta > noise:
        return f'{delta:+.3f}'
    return f'within noise ({delta:+.3f})'


def teacher_metric(run, runs, metric, teacher_map):
    """--teacher-map, else the best metric of the run in the set whose best.pt is the teacher."""
    if teacher_map is not None:
        return teacher_map
    found = [best_value(r, metric) for r in runs for t in teacher_weights(run['opt'])
             if (r['dir'] / 'weights' / 'best.pt').is_file() and same_file(r['dir'] / 'weights' / 'best.pt', t)]
    found = [v for v in found if v is not None]
    return max(found) if found else None  # several teachers: measure against the strongest


def baseline_runs(run, runs, explicit):
    if explicit is not None:
        return explicit
    key = match_key(run['opt'])
    return [r for r in runs if not is_distilled(r) and r['opt'] and match_key(r['opt']) == key]


def undistilled_role(run, runs, explicit):
    """'baseline' when a distilled run of the set is measured against this run, else '-' (a teacher
    trained in the same folder, or a run no distilled run matches)."""
    serves = any(is_distilled(r) and any(b is run for b in baseline_runs(r, runs, explicit)) for r in runs)
    return 'baseline' if serves else '-'


def compare_with_baseline(run, runs, metric, noise, teacher_map, explicit, kd=None):
    """(delta, verdict text, gap recovered or None, noise note) for one distilled run, or for the value
    `kd` standing for `run` (a seed group's mean)."""
    kd = best_value(run, metric) if kd is None else kd
    bases = [v for v in (best_value(b, metric) for b in baseline_runs(run, runs, explicit)) if v is not None]
    if kd is None or not bases:
        return None, 'no baseline', None, None
    base = sum(bases) / len(bases)
    band, source = group_noise(bases, noise)
    delta = kd - base
    teacher = teacher_metric(run, runs, metric, teacher_map)
    gap = (delta / (teacher - base)) if teacher is not None and teacher > base else None
    note = f'{run["name"]}: baseline {base:.4f} (mean of {len(bases)}), noise {band:.4f} ({source})' + \
        (f', teacher {teacher:.4f}' if teacher is not None else '')
    return delta, verdict(delta, band), gap, note


# ----------------------------------------------------------------------------- the table
def build_rows(runs, metric='mAP_0.5:0.95', noise=None, teacher_map=None, baseline=None, costs=True):
    """One dict per run with raw values (numbers stay numbers) plus notes on how each was judged."""
    explicit = resolve_baselines(baseline, runs)
    cache, rows, notes = {}, [], []
    for run in sorted(runs, key=lambda r: (str(match_key(r['opt'])), is_distilled(r), r['name'])):
        opt, df = run['opt'], run['results']
        params, gflops = model_cost(run, cache) if costs else (None, None)
        row = {'run': run['name'], 'teacher': teacher_label(opt), 'student': student_label(opt),
               'method': method_label(opt), 'weights': gains_label(opt),
               'mAP@0.5': best_value(run, 'mAP_0.5'), 'mAP@0.5:0.95': best_value(run, 'mAP_0.5:0.95'),
               'epochs': len(df), 'epochs_planned': opt.get('epochs'),
               'wall time': last_value(df, 'x/elapsed_s'), 'params': params, 'GFLOPs': gflops,
               'vs baseline': undistilled_role(run, runs, explicit), 'gap recovered': None, 'delta': None}
        if is_distilled(run):
            row['delta'], row['vs baseline'], row['gap recovered'], note = compare_with_baseline(
                run, runs, metric, noise, teacher_map, explicit)
            if note:
                notes.append(note)
        rows.append(row)
    return rows, notes


# ----------------------------------------------------------------------------- seeds
SEED_SUFFIX = re.compile(r'_(s|seed)\d+$')


def seed_groups(runs):
    """Runs that differ only in their seed: same data, student, epochs, size, teachers, method, gains."""
    groups = {}
    for run in runs:
        opt = run['opt']
        key = (str(match_key(opt)), teacher_label(opt), method_label(opt), gains_label(opt))
        groups.setdefault(key, []).append(run)
    return sorted(groups.values(), key=lambda g: (str(match_key(g[0]['opt'])), is_distilled(g[0]), g[0]['name']))


def group_label(group, with_folders=False):
    """The run folders' names without their seed suffix: a group whose seeds come from two sweeps is
    still 'lab_kd_2x', not 'sweep_a/lab_kd_2x,lab_kd_2x'. Two groups with one label get their folders."""
    label = ','.join(sorted({SEED_SUFFIX.sub('', r['dir'].name) for r in group}))
    return f"{label} ({','.join(sorted({r['dir'].parent.name for r in group}))})" if with_folders else label


def mean_and_spread(values):
    values = [v for v in values if v is not None]
    return (sum(values) / len(values), max(values) - min(values)) if values else (None, None)


def build_group_rows(runs, metric='mAP_0.5:0.95', noise=None, teacher_map=None, baseline=None):
    """One dict per seed group: mean and spread (max - min) of each metric; for distilled groups the
    group mean vs the baselines' mean, judged against the noise band as single runs are."""
    explicit = resolve_baselines(baseline, runs)
    groups = seed_groups(runs)
    labels = [group_label(g) for g in groups]
    rows = []
    for group, label in zip(groups, labels):
        first = group[0]
        row = {'group': group_label(group, with_folders=labels.count(label) > 1),
               'seeds': len(group), 'method': method_label(first['opt']), 'weights': gains_label(first['opt']),
               'vs baseline': undistilled_role(first, runs, explicit), 'gap recovered': None, 'delta': None,
               'paired': []}
        for m in ('mAP_0.5', 'mAP_0.5:0.95'):
            row[m] = mean_and_spread([best_value(r, m) for r in group])
        if is_distilled(first):
            row['paired'] = paired_deltas(group, baseline_runs(first, runs, explicit), metric)
            kd = mean_and_spread([best_value(r, metric) for r in group])[0]  # --metric may be any column
            if kd is not None:
                row['delta'], row['vs baseline'], row['gap recovered'], _ = compare_with_baseline(
                    first, runs, metric, noise, teacher_map, explicit, kd=kd)
            else:
                row['vs baseline'] = 'no baseline'
        rows.append(row)
    return rows


def paired_deltas(group, base_runs, metric):
    """Run minus the baseline of the same seed (same batches and head init), for every seed both have:
    a paired view that the seed-to-seed spread of the baselines does not blur."""
    base_by_seed = {b['opt'].get('seed', 0): best_value(b, metric) for b in base_runs}
    deltas = []
    for run in group:
        base, value = base_by_seed.get(run['opt'].get('seed', 0)), best_value(run, metric)
        if base is not None and value is not None:
            deltas.append(value - base)
    return deltas


def paired_text(deltas):
    if not deltas:
        return '-'
    return f'{sum(deltas) / len(deltas):+.3f} ({sum(d > 0 for d in deltas)} of {len(deltas)} > 0)'


def groups_to_markdown(rows):
    def cell(pair):
        mean, spread = pair
        return 'n/a' if mean is None else f'{mean:.3f} ± {spread:.3f}' if spread else f'{mean:.3f}'
    header = ['group', 'seeds', 'method', 'weights', 'mAP@0.5', 'mAP@0.5:0.95', 'vs baseline', 'gap recovered',
              'paired vs baseline']
    cells = [[r['group'], str(r['seeds']), r['method'], r['weights'], cell(r['mAP_0.5']), cell(r['mAP_0.5:0.95']),
              r['vs baseline'], '-' if r['gap recovered'] is None else f"{r['gap recovered']:+.0%}",
              paired_text(r['paired'])] for r in rows]
    return table_text(header, cells)


def resolve_baselines(baseline, runs):
    """--baseline RUN...: runs of the set (by name or path) or extra run folders."""
    if not baseline:
        return None
    chosen = []
    for b in baseline:
        match = [r for r in runs if r['name'] == str(b) or r['dir'] == Path(b).resolve()]
        chosen.extend(match or load_runs(find_runs([b])))
    return chosen


def last_value(df, column):
    if column not in df.columns or not len(df):
        return None
    v = pd.to_numeric(df[column], errors='coerce').dropna()
    return float(v.iloc[-1]) if len(v) else None


def format_duration(seconds):
    if seconds is None:
        return 'n/a'
    s = int(round(seconds))
    return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s' if s >= 60 else f'{s}s'


def format_row(row):
    """Text cells for the Markdown table."""
    def num(v, fmt):
        return 'n/a' if v is None else format(v, fmt)
    epochs = str(row['epochs'])
    if row['epochs_planned'] and row['epochs'] < int(row['epochs_planned']):
        epochs += f"/{row['epochs_planned']}"  # unfinished (killed or early-stopped)
    gap = row['gap recovered']
    return {**row, 'mAP@0.5': num(row['mAP@0.5'], '.3f'), 'mAP@0.5:0.95': num(row['mAP@0.5:0.95'], '.3f'),
            'epochs': epochs, 'wall time': format_duration(row['wall time']),
            'params': 'n/a' if row['params'] is None else f"{row['params'] / 1e6:.2f}M",
            'GFLOPs': num(row['GFLOPs'], '.3g'), 'gap recovered': '-' if gap is None else f'{gap:+.0%}'}


def table_text(header, cells):
    """A Markdown table with aligned columns."""
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(header)]
    line = lambda vals: '| ' + ' | '.join(v.ljust(w) for v, w in zip(vals, widths)) + ' |'  # noqa: E731
    sep = '|' + '|'.join('-' * (w + 2) for w in widths) + '|'
    return '\n'.join([line(header), sep] + [line(c) for c in cells])


def to_markdown(rows):
    return table_text(COLUMNS, [[str(format_row(r)[c]) for c in COLUMNS] for r in rows])


def write_csv(rows, file):
    """Raw values (seconds, fractions, counts) so that spreadsheets can sort and plot them."""
    fields = COLUMNS[:8] + ['epochs_planned', 'wall_time_s'] + COLUMNS[9:] + ['delta']
    with open(file, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
        w.writeheader()
        for r in rows:
            w.writerow({**r, 'wall_time_s': r['wall time']})


def plot_curves(runs, metric, file):
    """Metric vs epoch for every run; baselines dashed so distilled runs stand out."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), tight_layout=True)
    for run in sorted(runs, key=lambda r: r['name']):
        df = run['results']
        col = metric_column(df.columns, metric)
        x = df['epoch'] if 'epoch' in df.columns else range(len(df))
        ax.plot(x, df[col], '--' if not is_distilled(run) else '-', marker='.', label=run['name'])
    ax.set_xlabel('epoch')
    ax.set_ylabel(col)
    ax.set_title(f'{col} per epoch ({len(runs)} runs; dashed: no distillation)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5))
    fig.savefig(file, dpi=150)
    plt.close(fig)
    return Path(file)


# ----------------------------------------------------------------------------- CLI
def run(runs=(), csv_file=None, md=None, plot=None, metric='mAP_0.5:0.95', baseline=None, noise=None,
        teacher_map=None, costs=True, seeds=False, val=None):
    """Print the table; optionally write CSV / Markdown / plot. Returns the table rows."""
    if noise is not None and noise < 0:
        raise UserError(f'--noise must be >= 0, got {noise}')
    loaded = load_runs(find_runs(runs or [ROOT / 'runs' / 'train']), val)
    for r in loaded:  # fail early with the list of choices
        if val and metric.replace('metrics/', '') not in r['val']:
            raise UserError(f'--metric {metric} is not in {r["dir"]}/val_{val}.json; choose from '
                             f'{[k for k, v in r["val"].items() if isinstance(v, float)]}')
        if not val:
            metric_column(r['results'].columns, metric)
    rows, notes = build_rows(loaded, metric, noise, teacher_map, baseline, costs)
    table = to_markdown(rows)
    print(table)
    source = f'{metric} of val_{val}.json' if val else f'best {metric}'
    if notes:
        print(f'\nvs baseline / gap recovered use {source}:\n' + '\n'.join(f'  {n}' for n in notes))
    if seeds:
        group_table = groups_to_markdown(build_group_rows(loaded, metric, noise, teacher_map, baseline))
        values = f'values of val_{val}.json' if val else 'best values'
        print(f'\nSeed groups (mean ± spread = max - min of the {values}; vs baseline on {metric}):\n'
              + group_table)
        table += '\n\n' + group_table
    if md:
        Path(md).write_text(table + '\n')
    if csv_file:
        write_csv(rows, csv_file)
        print(f'CSV saved to {csv_file}')
    if plot:
        print(f'Plot saved to {plot_curves(loaded, metric, plot)}')
    return rows


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description='Compare YOLOv5 training / distillation runs',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('runs', nargs='*', help='run folders, globs, or folders holding runs (default: runs/train)')
    p.add_argument('--csv', dest='csv_file', help='also write the table as CSV (raw values) to this file')
    p.add_argument('--md', help='also write the Markdown table to this file')
    p.add_argument('--plot', help='write the metric-vs-epoch curves of all runs to this PNG')
    p.add_argument('--metric', default='mAP_0.5:0.95', help='metric for vs baseline, gap recovered and --plot')
    p.add_argument('--baseline', nargs='+', help='baseline run(s) for every distilled run (default: matched)')
    p.add_argument('--noise', type=float, help=f'noise band (default: baselines spread, else {DEFAULT_NOISE})')
    p.add_argument('--teacher-map', type=float, help="the teacher's metric, when its run is not in the set")
    p.add_argument('--seeds', action='store_true',
                   help='also one row per group of runs that differ only in seed: mean and spread, and '
                        'the mean difference to the baseline of the same seed')
    p.add_argument('--val', metavar='NAME', help='metrics from each run\'s val_NAME.json (benchmarks/revalidate.py) '
                                                 'instead of results.csv')
    p.add_argument('--no-costs', dest='costs', action='store_false', help='skip params/GFLOPs (no checkpoint reads)')
    return p.parse_args(argv)


if __name__ == '__main__':
    from utils.cli import run_cli
    run_cli(lambda opt: run(**vars(opt)), parse_opt)
