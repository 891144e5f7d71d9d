"""Training speed side by side, every figure measured in the same run, printed as one markdown table.

Rows (images/s; `--sections` picks some):
  data      training loader alone (mosaic, RAM cache, --workers), no model
  step      train step alone on batches already on the device (synthetic images and targets):
            the student, and student + teacher distillation (the trainer's own step code)
  e2e       train.py and train_distillation.py end to end (--epochs 1 on a replicated dataset),
            timed from batch --warmup on; peak GPU memory
  val       val.py whole pass (NMS and metrics included), from two runs of different lengths
            so that start-up is not counted
  floor     the FLOP floor: student forward + backward (3x its forward FLOPs) plus the teacher's
            forward, at the measured matmul rate; each step row is also shown as a fraction of it

GPU, full size:  python benchmarks/bench_speed.py --device 0 --imgsz 640 --batch 64 --iters 20
CPU, tiny:       python benchmarks/bench_speed.py --device cpu --imgsz 128 --batch 4 --iters 3
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / 'benchmarks'):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402
import yaml  # noqa: E402

import train  # noqa: E402
import train_distillation  # noqa: E402
import peers  # noqa: E402
from bench_dataloader import default_data, measure  # noqa: E402
from replicas import replicated_dataset  # noqa: E402
from distill.builder import DistillationBuilder  # noqa: E402
from models.checkpoint import load_model  # noqa: E402
from models.yolo import Model, model_summary  # noqa: E402
from utils.dataset_yaml import check_dataset  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.objective import Batch, DetectionObjective, ObjectiveBuilder  # noqa: E402
from utils.torch_utils import (ModelEMA, autocast_dtype, compiled, init_seeds, select_device,  # noqa: E402
                               smart_optimizer, to_channels_last)
from utils.trainer import Trainer  # noqa: E402

SECTIONS = ('data', 'step', 'e2e', 'val', 'floor')
SHARED_YOLOV5N = ROOT.parent / 'shared' / 'weights' / 'yolov5n.pt'
HYP = ROOT / 'data' / 'hyps' / 'hyp.scratch-low.yaml'


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory_gb(device):
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == 'cuda' else float('nan')


def reset_peak_memory(device):
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------- datasets
def teacher_for(teacher, nc, out_dir):
    """A teacher YAML gets the dataset's class count (a copy with `nc` set); a .pt is used as given."""
    if not str(teacher).endswith(('.yaml', '.yml')):
        return teacher
    _, meta = load_model(teacher, device='cpu', nc=nc)
    path = Path(out_dir) / f'{Path(teacher).stem}_nc{nc}.yaml'
    path.write_text(yaml.safe_dump({**meta['yaml'], 'nc': nc}, sort_keys=False))
    return path


# ---------------------------------------------------------------- step alone
def synthetic_batch(batch, imgsz, nc, device, per_image=8, seed=0):
    """uint8-range float images and plausible targets (image, class, xc, yc, w, h), on the device."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (batch, 3, imgsz, imgsz), generator=g, dtype=torch.uint8)
    n = batch * per_image
    image_index = torch.arange(batch).repeat_interleave(per_image).float()
    cls = torch.randint(0, nc, (n,), generator=g).float()
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.02
    xy = torch.rand(n, 2, generator=g) * (1 - wh) + wh / 2
    targets = torch.cat((image_index[:, None], cls[:, None], xy, wh), 1)
    imgs = imgs.to(device).float() / 255
    if device.type == 'cuda':
        imgs = imgs.contiguous(memory_format=torch.channels_last)
    return imgs, targets.to(device)


def step_state(student_cfg, nc, imgsz, device, amp=True, teacher=None, compile_mode=False):
    """The attributes Trainer._train_step / _optimizer_step read, built as Trainer._setup builds them."""
    hyp = yaml.safe_load(HYP.read_text())
    hyp.update(anchor_t=hyp.get('anchor_t', 4.0), label_smoothing=0.0)
    model = Model(student_cfg, nc=nc).to(device)
    nl = model.model[-1].nl
    hyp['box'] *= 3 / nl
    hyp['cls'] *= nc / 80 * 3 / nl
    hyp['obj'] *= (imgsz / 640) ** 2 * 3 / nl
    model.nc, model.hyp = nc, hyp
    model.train()
    builder = ObjectiveBuilder()
    if teacher:  # the public builder with train_distillation.py's defaults
        argv = ['--t_weights', str(teacher), *(['--compile', compile_mode] if compile_mode else [])]
        builder = DistillationBuilder(train_distillation.build_parser().parse_args(argv))
        builder.prepare_student(model, None, device, resuming=False)
    objective = builder.build(DetectionObjective(ComputeLoss(model)), model, hyp, unlabeled_images=0)
    optimizer = smart_optimizer(model, 'SGD', hyp['lr0'], hyp['momentum'], hyp['weight_decay'],
                                objective.trainable_modules())
    model = to_channels_last(model, device)
    amp_dtype = autocast_dtype(device, amp)
    return SimpleNamespace(
        model=model, forward=compiled(model, compile_mode), device=device,
        cuda=device.type == 'cuda', amp_dtype=amp_dtype, objective=objective, ddp_objective_parts=[],
        optimizer=optimizer, ema=ModelEMA(model), current_ni=0, last_opt_step=-1,
        scaler=torch.amp.GradScaler('cuda', enabled=amp_dtype == torch.float16))


def time_steps(state, imgs, targets, warmup, iters):
    """Images/s of forward + loss + backward + optimizer step + EMA, the trainer's code, every batch."""
    for i in range(warmup + iters):
        if i == warmup:
            t0 = sync(state.device)
        Trainer._train_step(state, Batch(imgs, targets))
        state.current_ni = i
        Trainer._optimizer_step(state)
    return imgs.shape[0] * iters / (sync(state.device) - t0)


def bench_step(a, device, teacher=None):
    """Images/s and peak GPU memory of the step alone (distillation when a teacher is given)."""
    init_seeds(0)
    state = step_state(a.student, a.nc, a.imgsz, device, amp=a.amp, teacher=teacher, compile_mode=a.compile)
    imgs, targets = synthetic_batch(a.batch, a.imgsz, a.nc, device)
    reset_peak_memory(device)
    rate = time_steps(state, imgs, targets, a.warmup, a.iters)
    return rate, peak_memory_gb(device)


# ---------------------------------------------------------------- end to end
class BatchTimer:
    """Trainer.batch_hook: clock from the end of batch `start - 1` to the end of batch `last`.

    Synchronises the GPU only at those two batches, so the loop keeps running ahead of the GPU.
    """

    def __init__(self, start, last, device):
        self.start, self.last, self.device = start, last, device
        self.images, self.t0, self.seconds, self.peak_gb = 0, None, None, float('nan')

    def __call__(self, i, n):
        if i == self.start - 1:
            self.t0 = sync(self.device)
        elif self.start <= i <= self.last:
            self.images += n
            if i == self.last:
                self.seconds = sync(self.device) - self.t0
                self.peak_gb = peak_memory_gb(self.device)

    def rate(self):
        if self.seconds is None:
            raise RuntimeError(f'the timed batches {self.start}-{self.last} were not all run')
        return self.images / self.seconds


def bench_end_to_end(a, device, data_yaml, project, teacher=None):
    """train.py (or train_distillation.py) for one epoch of warmup + iters batches, in this process."""
    distill = teacher is not None
    parser = train_distillation.build_parser() if distill else train.build_parser()
    argv = ['--data', str(data_yaml), '--cfg', a.student, '--weights', '', '--epochs', '1', '--imgsz', str(a.imgsz),
            '--batch-size', str(a.batch), '--workers', str(a.workers), '--device', a.device, '--cache', 'ram',
            '--project', str(project), '--name', 'distill' if distill else 'train', '--exist-ok', '--noplots',
            '--noautoanchor', '--noval', *(['--amp'] if a.amp else ['--no-amp']),
            *(['--compile', a.compile] if a.compile else [])]
    if distill:
        argv += ['--t_weights', str(teacher)]
    opt = train.prepare_run(train.parse_opt(argv, parser=parser))
    trainer = Trainer(opt, DistillationBuilder(opt) if distill else None)
    trainer.batch_hook = timer = BatchTimer(a.warmup, a.warmup + a.iters - 1, device)
    reset_peak_memory(device)
    trainer.train()
    return timer.rate(), timer.peak_gb


# ---------------------------------------------------------------- val.py
def run_val(a, data_yaml, weights, project):
    cmd = [sys.executable, str(ROOT / 'val.py'), '--data', str(data_yaml), '--weights', str(weights),
           '--imgsz', str(a.imgsz), '--batch-size', str(a.batch * 2), '--device', a.device,
           '--workers', str(a.workers), '--project', str(project), '--name', 'val', '--exist-ok', '--noplots']
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f'val.py failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}')
    return time.perf_counter() - t0


def bench_val(a, source_yaml, weights, work, run=None, tag='ours'):
    """Whole-pass images/s: the extra images of a longer run over the extra time (start-up cancels).

    `run(a, data_yaml, weights, folder) -> seconds` is this project's val.py by default (peers.py gives
    v7.0's); each caller gets its own replicated folders, so that each scans its own labels."""
    run = run or run_val
    short = getattr(a, 'val_images', None) or a.batch * 2 * a.iters
    long_ = short * 3
    times = []
    for n in (short, long_):
        folder = work / f'val_{tag}_{n}'
        folder.mkdir(exist_ok=True)
        yaml_path = replicated_dataset(source_yaml, a.batch, n, folder)
        times.append(run(a, yaml_path, weights, folder))
    extra = times[1] - times[0]
    # at tiny sizes start-up noise can exceed the extra work: no rate is better than a huge false one
    return (long_ - short) / extra if extra > 0 else float('nan')


# ---------------------------------------------------------------- FLOP floor
def forward_gflops(cfg_or_weights, imgsz):
    model, _ = load_model(cfg_or_weights, device='cpu')
    return model_summary(model, imgsz)['gflops']


def matmul_tflops(device, dtype, n, reps):
    """Measured dense matmul rate: the practical peak that the FLOP floor is taken against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    t0 = sync(device)
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (sync(device) - t0) / 1e12


# ---------------------------------------------------------------- driver
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument('--device', default='', help="'' = first GPU if any, else cpu; 0; cpu")
    ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--iters', type=int, default=20, help='timed iterations per figure')
    ap.add_argument('--warmup', type=int, default=3, help='untimed iterations first (cuDNN autotuning, compile)')
    ap.add_argument('--student', default='yolov5s.yaml', help='student model YAML')
    ap.add_argument('--teacher', default='yolov5m.yaml', help='teacher YAML (random weights) or .pt')
    ap.add_argument('--nc', type=int, default=80, help='classes of the synthetic step batches')
    ap.add_argument('--data', default=default_data(), help='dataset YAML for the data/e2e/val rows')
    ap.add_argument('--val-weights', default='', help='weights for val.py (default: shared yolov5n.pt for '
                                                      'coco128, else the demo teacher)')
    ap.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument('--amp', action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument('--compile', nargs='?', const='default', default=False, choices=train.COMPILE_MODES,
                    help='torch.compile the student forward (step rows) / train.py --compile MODE (e2e rows)')
    ap.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument('--val-images', type=int, default=0, help='images of the shorter val.py run (the longer has 3x; '
                                                             'default 2 x batch x iters)')
    peer = ap.add_argument_group('peers (--peers: only the table against YOLOv5 v7.0 and the Adlik fork)')
    peer.add_argument('--peers', nargs='?', const=str(peers.DEFAULT_DIR), default=None, metavar='DIR',
                      help='time the peers from the archives in DIR beside ours; one table, ratios ours/peer last')
    peer.add_argument('--peer-wheels', default=os.environ.get('PEER_WHEELS', str(ROOT / '.peer_wheels')),
                      help="wheels of the peers' packages (benchmarks/peer_wheels.sh), used when they are missing")
    peer.add_argument('--peer-logs', default='', help="keep the peers' output and timings in this folder")
    peer.add_argument('--peer-teacher-weights', default=str(SHARED_YOLOV5N),
                      help="an official checkpoint for the fork's --t_weights (its --t_cfg is --teacher's YAML)")
    return ap.parse_args(argv)


def default_val_weights(data_yaml):
    if 'coco128' in str(data_yaml) and SHARED_YOLOV5N.exists():
        return SHARED_YOLOV5N
    return ROOT / 'weights' / 'demo_teacher_yolov5s.pt'


def main(argv=None):
    a = parse_args(argv)
    device = select_device(a.device)
    a.device = 'cpu' if device.type == 'cpu' else str(device.index)
    if a.peers:
        return peers_table(a, device)
    rows = []  # (what, images/s, peak GB, floor images/s or None)
    floor_dtype = autocast_dtype(device, a.amp) or torch.float32
    t_name = Path(a.teacher).stem
    with tempfile.TemporaryDirectory(prefix='bench_speed_') as tmp:
        work = Path(tmp)
        floor_student = floor_distill = None
        if 'floor' in a.sections:
            n, reps = (8192, 20) if device.type == 'cuda' else (512, 5)
            rate = matmul_tflops(device, floor_dtype, n, reps)
            fp32 = matmul_tflops(device, torch.float32, n, reps) if floor_dtype != torch.float32 else rate
            s_gf, t_gf = forward_gflops(a.student, a.imgsz), forward_gflops(a.teacher, a.imgsz)
            floor_student = rate * 1e3 / (3 * s_gf)
            floor_distill = rate * 1e3 / (3 * s_gf + t_gf)
            print(f'matmul {n}x{n}: {rate:.2f} TFLOP/s {str(floor_dtype)[6:]}, {fp32:.2f} TFLOP/s fp32; '
                  f'forward GFLOPs/image: student {s_gf:.2f}, teacher {t_gf:.2f}')
            rows.append((f'FLOP floor, student step (3 x {s_gf:.2f} GFLOPs)', floor_student, None, None))
            rows.append((f'FLOP floor, distillation step (+ {t_gf:.2f} GFLOPs)', floor_distill, None, None))
        if 'step' in a.sections:
            r, mem = bench_step(a, device)
            rows.append((f'step alone: {Path(a.student).stem}', r, mem, floor_student))
            r, mem = bench_step(a, device, teacher=teacher_for(a.teacher, a.nc, work))
            rows.append((f'step alone: {Path(a.student).stem} + teacher {t_name}', r, mem, floor_distill))
        if 'data' in a.sections or 'e2e' in a.sections:
            (work / 'data').mkdir()
            data_yaml = replicated_dataset(a.data, a.batch * (a.warmup + a.iters), a.batch * 2, work / 'data')
            d = check_dataset(data_yaml)
        if 'data' in a.sections:
            hyp = yaml.safe_load(HYP.read_text())
            secs, n, used = measure(d['train'], d['nc'], hyp, a.imgsz, a.batch, a.workers, 1, cache='ram')
            rows.append((f'data pipeline alone ({used} workers, mosaic, RAM cache)', n / secs, None, None))
        if 'e2e' in a.sections:
            r, mem = bench_end_to_end(a, device, data_yaml, work / 'runs')
            rows.append(('train.py end to end', r, mem, floor_student))
            r, mem = bench_end_to_end(a, device, data_yaml, work / 'runs', teacher_for(a.teacher, d['nc'], work))
            rows.append((f'train_distillation.py end to end (teacher {t_name})', r, mem, floor_distill))
        if 'val' in a.sections:
            weights = a.val_weights or default_val_weights(a.data)
            rows.append((f'val.py whole pass ({Path(weights).name})', bench_val(a, a.data, weights, work), None, None))
    print_table(a, device, rows, floor_dtype)
    return rows


def peers_table(a, device):
    """--peers: this project's train.py, train_distillation.py and val.py against the peers' on the same
    replicated data, one after the other in this run; rows (what, ours, peer, ours GB, peer GB)."""
    with tempfile.TemporaryDirectory(prefix='bench_peers_') as tmp:
        work = Path(tmp)
        env = peers.setup(work / 'peers', a.peers, a.peer_wheels, logs=a.peer_logs or None)
        data_yaml = replicated_dataset(a.data, a.batch * (a.warmup + a.iters), a.batch * 2, work / 'data')
        teacher = teacher_for(a.teacher, check_dataset(data_yaml)['nc'], work)
        s, t = Path(a.student).stem, Path(a.teacher).stem
        ours = bench_end_to_end(a, device, data_yaml, work / 'runs')
        theirs = peers.time_v7_train(env, a, data_yaml, work / 'peer_runs')
        rows = [(f'train.py {s} from scratch vs v7.0 train.py', *zip(ours, theirs))]
        ours = bench_end_to_end(a, device, data_yaml, work / 'runs', teacher)
        theirs = peers.time_fork_distillation(env, a, data_yaml, work / 'peer_runs')
        rows.append((f'train_distillation.py {s} + teacher {t} vs Adlik train_distillation.py', *zip(ours, theirs)))
        weights = a.val_weights or default_val_weights(a.data)
        ours = bench_val(a, a.data, weights, work)
        theirs = bench_val(a, a.data, weights, work, run=peers.v7_val_runner(env), tag='v7')
        rows.append((f'val.py whole pass ({Path(weights).name}) vs v7.0 val.py', (ours, theirs), (None, None)))
    rows = [(what, *rate, *mem) for what, rate, mem in rows]
    peers.print_table(f'{run_header(a, device)}; peers from {a.peers}, each from batch {a.warmup} on', rows)
    return rows


def run_header(a, device):
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({os.cpu_count()} cores)'
    return (f'{name}, torch {torch.__version__}, imgsz {a.imgsz}, batch {a.batch}, {a.iters} timed iterations '
            f'after {a.warmup}, AMP {str(autocast_dtype(device, a.amp) or "off").replace("torch.", "")}, '
            f'compile {a.compile}')


def print_table(a, device, rows, floor_dtype):
    print(f'\n{run_header(a, device)}, floor at the {str(floor_dtype)[6:]} matmul rate\n')
    print('| measurement | images/s | peak GPU GB | fraction of FLOP floor |')
    print('|---|---:|---:|---:|')
    for what, rate, mem, floor in rows:
        mem_s = '' if mem is None or mem != mem else f'{mem:.1f}'
        frac = f'{rate / floor:.2f}' if floor else ''
        rate_s = 'not measurable' if rate != rate else f'{rate:.1f}'
        print(f'| {what} | {rate_s} | {mem_s} | {frac} |')


if __name__ == '__main__':
    main()
