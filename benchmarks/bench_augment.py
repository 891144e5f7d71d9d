"""CPU-path augmentation against device augmentation (train.py --device-augment).

1. Worker time per image: the CPU path's whole sample (decode/cache, mosaic, warp, HSV, flips) against
   the device path's worker part (decode/cache, letterbox, draw the plan), one process, no loader.
2. Loader throughput (images/s): the CPU-path loader against the device-path loader followed by
   DeviceAugment on --device (which runs in the main process, as in training).
3. DeviceAugment alone (images/s) on a few batches already loaded.

Uses coco128 from ../shared when present, else the embedded synthetic set. The first batch of each
loader run is not timed (worker start-up).

  python benchmarks/bench_augment.py --imgsz 640 --batch 16 --workers 2 --device cpu
"""
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from bench_dataloader import loader_parser  # noqa: E402
from utils.dataset_yaml import check_dataset  # noqa: E402
from utils.datasets import create_dataloader  # noqa: E402
from utils.device_augment import DeviceAugment  # noqa: E402


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


def worker_ms(dataset, n):
    """Mean ms per sample of dataset[key] over n keys (after one warm-up sample)."""
    keys = [(i % len(dataset), 0, True) for i in range(n + 1)]
    dataset[keys[0]]
    t0 = time.perf_counter()
    for k in keys[1:]:
        dataset[k]
    return (time.perf_counter() - t0) / n * 1e3


def loader_rate(loader, augment, device, epochs):
    """Images/s through the loader (and `augment` on `device` when given), first batch excluded."""
    it = iter(loader)
    next(it)
    n, t0 = 0, sync(device)
    batches = [it] + [loader] * (epochs - 1)
    for source in batches:
        for batch in source:
            imgs = augment(batch)[0] if augment else batch[0].to(device, non_blocking=True)
            n += len(imgs)
    return n / (sync(device) - t0)


def augment_rate(loader, augment, device, batches=4, repeats=3):
    """Images/s of `augment` alone on a few batches already loaded (pinned when on CUDA)."""
    it = iter(loader)
    held = [next(it) for _ in range(min(batches, len(loader)))]
    augment(held[0])  # warm-up: kernels, allocator
    n, t0 = 0, sync(device)
    for _ in range(repeats):
        for batch in held:
            n += len(augment(batch)[0])
    return n / (sync(device) - t0)


def main(argv=None):
    ap = loader_parser(__doc__.splitlines()[0])
    ap.add_argument('--workers', type=int, default=os.cpu_count() or 1)
    ap.add_argument('--samples', type=int, default=64, help='images timed for the worker-time rows')
    ap.add_argument('--device', default='cpu', help='where DeviceAugment runs (cpu, cuda, cuda:0)')
    a = ap.parse_args(argv)
    data, device = check_dataset(a.data), torch.device(a.device)
    hyp = yaml.safe_load(Path(a.hyp).read_text())
    print(f"data {a.data} (train {data['train']}), imgsz {a.imgsz}, batch {a.batch}, workers {a.workers}, "
          f"cache {a.cache}, device {device}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for device_augment in (False, True):
        loader, dataset = create_dataloader(data['train'], a.imgsz, a.batch, 32, hyp=hyp, augment=True,
                                            workers=a.workers, shuffle=True, nc=data['nc'], seed=0, cache=a.cache,
                                            device_augment=device_augment)
        ms = worker_ms(dataset, a.samples)
        augment = DeviceAugment(device, hyp, a.imgsz) if device_augment else None
        rate = loader_rate(loader, augment, device, a.epochs)
        alone = augment_rate(loader, augment, device) if augment else float('nan')
        name = f'device path (worker plan + DeviceAugment on {device})' if device_augment else 'CPU path'
        rows.append((name, ms, rate, alone))
    print('| path | worker ms / image | loader images/s | DeviceAugment alone, images/s |')
    print('|---|---|---|---|')
    for name, ms, rate, alone in rows:
        print(f'| {name} | {ms:.2f} | {rate:.1f} | {alone:.1f} |')
    return rows


if __name__ == '__main__':
    main()
