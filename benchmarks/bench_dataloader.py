"""Training dataloader throughput (images/s) with mosaic augmentation, for several worker counts.

Uses coco128 from ../shared when present, else the embedded synthetic set (160 px images upscaled
to --imgsz). The first batch of each run is not timed: it includes starting the workers.

  python benchmarks/bench_dataloader.py --imgsz 640 --batch 16 --workers 0 2
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from utils.dataset_yaml import check_dataset  # noqa: E402
from utils.datasets import create_dataloader  # noqa: E402

SHARED_COCO128 = ROOT.parent / 'shared' / 'datasets' / 'coco128' / 'coco128.yaml'


def default_data():
    return str(SHARED_COCO128) if SHARED_COCO128.exists() else str(ROOT / 'data' / 'synthetic.yaml')


def measure(train_path, nc, hyp, imgsz, batch, workers, epochs, cache=None):
    """Seconds and images for `epochs` passes, the first batch excluded."""
    loader, _ = create_dataloader(train_path, imgsz, batch, 32, hyp=hyp, augment=True, workers=workers,
                                  shuffle=True, nc=nc, seed=0, cache=cache)
    it = iter(loader)
    next(it)  # warm-up: worker start-up is not throughput
    n, t0 = 0, time.perf_counter()
    for imgs, _, _, _ in it:
        n += len(imgs)
    for _ in range(epochs - 1):
        for imgs, _, _, _ in loader:
            n += len(imgs)
    return time.perf_counter() - t0, n, loader.num_workers


def loader_parser(description):
    """The flags of the loader benchmarks (this one and bench_augment.py), --workers aside."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument('--data', default=default_data(), help='dataset YAML (default: shared coco128, else synthetic)')
    ap.add_argument('--hyp', default=str(ROOT / 'data' / 'hyps' / 'hyp.scratch-low.yaml'))
    ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--epochs', type=int, default=2, help='passes over the training set per measurement')
    ap.add_argument('--cache', choices=('ram', 'disk'), help='decode images once (--cache of train.py)')
    return ap


def main(argv=None):
    ap = loader_parser(__doc__.splitlines()[0])
    ap.add_argument('--workers', type=int, nargs='+', default=[0, os.cpu_count() or 1])
    a = ap.parse_args(argv)
    data = check_dataset(a.data)
    hyp = yaml.safe_load(Path(a.hyp).read_text())
    print(f"data {a.data} (train {data['train']}), imgsz {a.imgsz}, batch {a.batch}, mosaic {hyp.get('mosaic')}, "
          f"cache {a.cache}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'workers':>8} {'images':>8} {'seconds':>8} {'images/s':>9} {'vs first':>9}")
    first = None
    for w in a.workers:
        secs, n, used = measure(data['train'], data['nc'], hyp, a.imgsz, a.batch, w, a.epochs, a.cache)
        first = first or n / secs
        print(f'{used:>8} {n:>8} {secs:>8.2f} {n / secs:>9.1f} {n / secs / first:>8.2f}x')


if __name__ == '__main__':
    main()
