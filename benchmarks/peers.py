"""YOLOv5 v7.0 and the Adlik distillation fork, set up and timed beside this project (bench_speed.py --peers).

Setup follows ../shared/peers/README.md: both archives extracted into a work folder, the fork's one-line
loss patch applied, the shims and a folder of the peers' extra packages (psutil requests seaborn scipy
thop, installed there from wheels by `pip --no-index`; see peer_wheels.sh) on the peers' PYTHONPATH
only, a config folder holding the fonts they would otherwise download. Every peer runs in a subprocess
from its own tree; nothing of theirs is imported here, and this project's runs never see the shims.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parent
DEFAULT_DIR = BENCH.parents[1] / 'shared' / 'peers'
ARCHIVES = {'v7': 'yolov5-v7.0', 'fork': 'adlik-yolov5'}  # key -> archive stem = extracted folder
NEEDED = ('psutil', 'requests', 'seaborn', 'scipy', 'thop')
TIMER = BENCH / 'peer_timer.py'


class PeerSetupError(RuntimeError):
    """The peers cannot run here (archives or their packages missing): the benchmark says what to fetch."""


def missing_files(peers_dir):
    peers_dir = Path(peers_dir)
    wanted = [peers_dir / f'{stem}.tar.gz' for stem in ARCHIVES.values()]
    wanted += [peers_dir / 'adlik_loss.patch', peers_dir / 'shims' / 'sitecustomize.py']
    return [str(p) for p in wanted if not p.is_file()]


def apply_normal_diff(diff_file, target):
    """Apply a normal-format diff of single-line changes (`NcN`, `< old`, `---`, `> new`), as `patch` would;
    done here so that the GPU machine needs no `patch` binary. Refuses a file whose line differs."""
    lines = Path(target).read_text().splitlines(keepends=True)
    hunks = Path(diff_file).read_text().split('\n')
    for i, head in enumerate(hunks):
        if head and head[0].isdigit():
            n = int(head.split('c')[0]) - 1
            old, new = hunks[i + 1][2:], hunks[i + 3][2:]
            if lines[n].rstrip('\n') != old:
                raise PeerSetupError(f'{diff_file} does not apply to {target} line {n + 1}')
            lines[n] = new + '\n'
    Path(target).write_text(''.join(lines))


def font_file():
    import matplotlib
    return Path(matplotlib.get_data_path()) / 'fonts' / 'ttf' / 'DejaVuSans.ttf'


def install_packages(pydeps, wheels, env):
    """Install into `pydeps` those of NEEDED that the peers' python cannot import, from the wheels folder."""
    probe = 'import importlib.util, sys; print(" ".join(m for m in sys.argv[1:] if not importlib.util.find_spec(m)))'
    missing = subprocess.run([sys.executable, '-c', probe, *NEEDED], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
    if not missing:
        return
    if not wheels or not Path(wheels).is_dir():
        raise PeerSetupError(f'the peers need {" ".join(missing)}: run `bash benchmarks/peer_wheels.sh DIR` where '
                             f'there is network and pass --peer-wheels DIR')
    done = subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-index', '--no-deps',
                           '--find-links', str(wheels), '--target', str(pydeps), *missing],
                          capture_output=True, text=True)
    if done.returncode:
        raise PeerSetupError(f'installing {missing} from {wheels} failed:\n{done.stderr[-1500:]}')


def setup(work, peers_dir=DEFAULT_DIR, wheels=None, logs=None):
    """Extract and prepare both peers under `work`; returns their trees and the environment to run them in."""
    if missing_files(peers_dir):
        raise PeerSetupError(f'peer files missing: {", ".join(missing_files(peers_dir))}')
    peers_dir, work = Path(peers_dir).resolve(), Path(work).resolve()  # the peers run from their own trees
    work.mkdir(parents=True, exist_ok=True)
    trees = {}
    for key, stem in ARCHIVES.items():
        trees[key] = work / stem
        if not trees[key].is_dir():
            with tarfile.open(peers_dir / f'{stem}.tar.gz') as tar:
                tar.extractall(work, filter='data')
            if key == 'fork':
                apply_normal_diff(peers_dir / 'adlik_loss.patch', trees[key] / 'utils' / 'loss.py')
    config, pydeps = work / 'config', work / 'pydeps'
    config.mkdir(exist_ok=True)
    pydeps.mkdir(exist_ok=True)
    for name in ('Arial.ttf', 'Arial.Unicode.ttf'):
        shutil.copyfile(font_file(), config / name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(peers_dir / 'shims'), str(pydeps))),
               YOLOv5_AUTOINSTALL='False', WANDB_MODE='disabled', YOLOV5_CONFIG_DIR=str(config))
    install_packages(pydeps, wheels, env)
    return SimpleNamespace(v7=trees['v7'], fork=trees['fork'], env=env, logs=Path(logs or work / 'logs'))


def run_peer(peers, tree, cmd, log_name, extra_env=None):
    """Run `cmd` in a peer tree; its output goes to logs/<log_name>.log. Returns the finished process."""
    peers.logs.mkdir(parents=True, exist_ok=True)
    log = peers.logs / f'{log_name}.log'
    with open(log, 'w') as f:
        done = subprocess.run(cmd, cwd=tree, env={**peers.env, **(extra_env or {})}, stdout=f,
                              stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        raise RuntimeError(f'peer run {log_name} failed ({" ".join(map(str, cmd))}):\n{log.read_text()[-3000:]}')
    return log


def train_argv(a, data_yaml, project, name, cfg):
    """Flags both peers share with this project's e2e rows: 1 epoch, from scratch, RAM cache, no autoanchor."""
    return ['--data', str(data_yaml), '--cfg', cfg, '--weights', '', '--epochs', '1', '--imgsz', str(a.imgsz),
            '--batch-size', str(a.batch), '--workers', str(a.workers), '--device', a.device, '--cache', 'ram',
            '--project', str(project), '--name', name, '--exist-ok', '--noautoanchor', '--noval']


def time_training(peers, tree, script, argv, a, name):
    """Images/s (batch --warmup to the last of --iters batches) and peak GPU GB (None on CPU) of a peer script."""
    out = peers.logs / f'{name}.json'
    peers.logs.mkdir(parents=True, exist_ok=True)
    clock = {'PEER_TIMER_START': str(a.warmup), 'PEER_TIMER_LAST': str(a.warmup + a.iters - 1),
             'PEER_TIMER_OUT': str(out)}
    out.unlink(missing_ok=True)
    log = run_peer(peers, tree, [sys.executable, str(TIMER), script, *argv], name, clock)
    if not out.is_file():
        raise RuntimeError(f'peer run {name} wrote no timing:\n{log.read_text()[-3000:]}')
    got = json.loads(out.read_text())
    return a.batch * got['batches'] / got['seconds'], got['peak_gb']


def model_yaml(name):
    """A model YAML by file name, as each peer finds it in its own models/ folder."""
    return f'models/{Path(name).name}'


def time_v7_train(peers, a, data_yaml, project):
    argv = train_argv(a, data_yaml, project, 'v7_train', model_yaml(a.student)) + ['--noplots']
    return time_training(peers, peers.v7, 'train.py', argv, a, 'v7_train')


def time_fork_distillation(peers, a, data_yaml, project):
    """The fork's train_distillation.py (output distillation, its default) with a random-init teacher of
    --teacher's architecture: it builds the teacher from --t_cfg and loads the matching tensors of
    --t_weights, and an official checkpoint of another size has none that match."""
    argv = train_argv(a, data_yaml, project, 'fork_distill', model_yaml(a.student))
    argv += ['--t_weights', str(Path(a.peer_teacher_weights).resolve()), '--t_cfg', model_yaml(a.teacher)]
    return time_training(peers, peers.fork, 'train_distillation.py', argv, a, 'fork_distill')


def v7_val_runner(peers):
    """A `run(a, data_yaml, weights, folder) -> seconds` for bench_speed.bench_val: v7.0's val.py, whole process."""
    def run(a, data_yaml, weights, folder):
        cmd = [sys.executable, 'val.py', '--data', str(data_yaml), '--weights', str(Path(weights).resolve()),
               '--imgsz', str(a.imgsz), '--batch-size', str(a.batch * 2), '--device', a.device,
               '--workers', str(a.workers), '--project', str(folder), '--name', 'val', '--exist-ok']
        t0 = time.perf_counter()
        run_peer(peers, peers.v7, cmd, f'v7_val_{Path(folder).name}')
        return time.perf_counter() - t0
    return run


def ratio(ours, peer):
    return ours / peer if ours and peer and ours == ours and peer == peer else None


def print_table(header, rows):
    """rows: (what, ours images/s, peer images/s, ours peak GB, peer peak GB); ratios ours/peer last."""
    def fmt(x, digits):
        return '' if x is None or x != x else f'{x:.{digits}f}'
    print(f'\n{header}\n')
    print('| measurement (ours vs peer) | ours images/s | peer images/s | ours peak GPU GB | peer peak GPU GB '
          '| speed ours/peer | memory ours/peer |')
    print('|---|---:|---:|---:|---:|---:|---:|')
    for what, r_ours, r_peer, m_ours, m_peer in rows:
        print(f'| {what} | {fmt(r_ours, 1)} | {fmt(r_peer, 1)} | {fmt(m_ours, 2)} | {fmt(m_peer, 2)} '
              f'| {fmt(ratio(r_ours, r_peer), 2)} | {fmt(ratio(m_ours, m_peer), 2)} |')
