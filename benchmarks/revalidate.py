"""Validate finished runs (or weights files) again on another val set or image size, and keep the result.

The cpu DeepPCB protocol trains and validates on 320-px tiles of the 640-px images. Tiles cut the
defects that cross their borders (a box < 60 % inside is dropped, the rest clipped) and put many more
defects at an image border, so a tile metric does not rank models as the full images do. The same
weights validated on the full 640-px val images (native resolution, no cut boxes) give the metric the
gpu protocol reports:

    python benchmarks/revalidate.py runs/deeppcb_cpu_e12 weights/deeppcb_teacher_yolov5s_cpu.pt \
        --data ../shared/datasets/deeppcb/deeppcb.yaml --imgsz 640 --name full640
    python compare.py runs/deeppcb_cpu_e12 --seeds --val full640

A run folder (one holding results.csv, found recursively as compare.py does) gets
<run>/val_<name>.json from its weights/best.pt (else last.pt); a .pt file gets <stem>_val_<name>.json
beside it (the form deeppcb_kd.sh reads a teacher's metric from). Each file holds mAP_0.5, mAP_0.5:0.95,
precision and recall, and the data, image size and weights they were measured with; a target whose file
exists is skipped, so an interrupted pass resumes.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import val  # noqa: E402  (after the path fix: this script runs from benchmarks/)
from compare import find_runs  # noqa: E402


def targets(paths, name):
    """(weights file, json file) per run folder or .pt file named by paths."""
    out, folders = [], []
    for p in map(Path, paths):
        if p.suffix == '.pt':
            if not p.is_file():
                raise FileNotFoundError(f'{p}: no such weights file')
            out.append((p, p.with_name(f'{p.stem}_val_{name}.json')))
        else:
            folders.append(p)
    for run in find_runs(folders) if folders else []:
        weights = next((w for w in (run / 'weights' / 'best.pt', run / 'weights' / 'last.pt') if w.is_file()), None)
        if weights is None:
            print(f'WARNING: {run} has no weights/best.pt or last.pt: skipped')
            continue
        out.append((weights, run / f'val_{name}.json'))
    return out


def revalidate(weights, data, imgsz, batch_size, device, workers):
    """The metrics of one weights file, validated without plots into a throw-away folder."""
    with tempfile.TemporaryDirectory() as tmp:
        (p, r, map50, map5095, *_), _, _ = val.run(data=data, weights=str(weights), imgsz=imgsz,
                                                    batch_size=batch_size, device=device, workers=workers,
                                                    half=False, plots=False, project=tmp, name='val')
    return {'mAP_0.5': map50, 'mAP_0.5:0.95': map5095, 'precision': p, 'recall': r}


def write_json_atomic(file, obj):
    tmp = file.with_name(file.name + '.tmp')
    tmp.write_text(json.dumps(obj, indent=1) + '\n')
    tmp.replace(file)


def run(paths, data, imgsz=640, name='full640', batch_size=16, device='', workers=2):
    done = []
    for weights, out in targets(paths, name):
        if out.is_file():
            print(f'{out} exists, skipping')
            continue
        t0 = time.time()
        metrics = revalidate(weights, data, imgsz, batch_size, device, workers)
        write_json_atomic(out, {**metrics, 'data': str(data), 'imgsz': imgsz, 'weights': str(weights)})
        print(f'{out}: mAP@0.5 {metrics["mAP_0.5"]:.3f}, mAP@0.5:0.95 {metrics["mAP_0.5:0.95"]:.3f} '
              f'({time.time() - t0:.0f} s)')
        done.append(out)
    return done


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description='Validate finished runs or weights files again; keep the metrics',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('paths', nargs='+', help='run folders (searched recursively, as compare.py does) or .pt files')
    p.add_argument('--data', required=True, help='dataset YAML whose val split to use')
    p.add_argument('--imgsz', type=int, default=640, help='validation image size (pixels)')
    p.add_argument('--name', default='full640', help='tag of the result files: val_<name>.json')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or cpu')
    p.add_argument('--workers', type=int, default=2)
    opt = p.parse_args(argv)
    if not opt.name.replace('_', '').replace('-', '').isalnum():
        p.error(f'--name must be letters, digits, - or _, got {opt.name!r}')
    return opt


if __name__ == '__main__':
    from utils.cli import run_cli
    run_cli(lambda opt: run(**vars(opt)), parse_opt)
