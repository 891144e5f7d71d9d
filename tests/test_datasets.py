"""Dataset YAML checking, label verification + cache, and the dataloader contract."""
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import utils.label_cache as label_cache
from utils.dataset_yaml import check_dataset
from utils.datasets import DistributedKeySampler, LoadImagesAndLabels, create_dataloader
from utils.label_cache import DatasetError

SHARED = Path(__file__).resolve().parents[2] / 'shared'
HYP = dict(mosaic=1.0, mixup=0.5, copy_paste=0.5, degrees=5.0, translate=0.1, scale=0.5, shear=2.0,
           perspective=0.0, flipud=0.5, fliplr=0.5, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('YOLOV5_DISTILL_CACHE_DIR', str(tmp_path / 'user-cache'))


def _image(path, w=64, h=48, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, shape, dtype=np.uint8))


def _label(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _good_split(root, split='train', n=4, w=64, h=48):
    for i in range(n):
        _image(root / 'images' / split / f'{i}.png', w, h, seed=i)
        _label(root / 'labels' / split / f'{i}.txt', f'{i % 3} 0.5 0.5 0.4 0.3\n1 0.25 0.25 0.2 0.2\n')
    return root / 'images' / split


# ---------------------------------------------------------------- check_dataset
def test_check_dataset_resolves_paths_relative_to_yaml(tmp_path):
    root = tmp_path / 'ds'
    _good_split(root, 'train')
    _good_split(root, 'val', n=2)
    (root / 'extra.txt').write_text('./images/val/0.png\nimages/val/1.png\n')
    (tmp_path / 'cfg').mkdir()
    y = tmp_path / 'cfg' / 'd.yaml'
    y.write_text('path: ../ds\ntrain: images/train\nval: [images/val, extra.txt]\nnames: {0: a, 1: b, 2: c}\n')
    d = check_dataset(str(y))
    assert d['path'] == str(root.resolve()) and d['nc'] == 3 and d['names'] == ['a', 'b', 'c']
    assert d['train'] == str(root / 'images' / 'train') and d['test'] is None
    assert d['val'] == [str(root / 'images' / 'val'), str(root / 'extra.txt')]
    _, ds = create_dataloader(d['val'], 64, 2, 32, workers=0, nc=d['nc'])
    assert len(ds) == 4  # 2 from the folder + the 2 listed in the txt (relative to its own folder)


def test_check_dataset_accepts_dict_and_absolute_path(tmp_path):
    root = tmp_path / 'ds'
    _good_split(root)
    d = check_dataset({'path': str(root), 'train': 'images/train', 'val': 'images/train', 'nc': 2})
    assert d['names'] == ['class0', 'class1'] and d['val'] == str(root / 'images' / 'train')


@pytest.mark.parametrize('text, match', [
    ('train: a\nval: a\nnc: 3\nnames: [x, y]\n', 'nc=3 but 2 names'),
    ('train: a\nval: a\nnames: {0: x, 2: y}\n', 'without gaps'),
    ('train: a\nnames: [x]\n', '`val` is required'),
    ('- just\n- a list\n', 'must be a mapping'),
    ('train: a\nval: a\nnames: 7\n', 'list or a dict'),
])
def test_check_dataset_rejects_malformed_yaml(tmp_path, text, match):
    y = tmp_path / 'bad.yaml'
    y.write_text(text)
    with pytest.raises(DatasetError, match=match):
        check_dataset(y)


def test_download_key_is_quoted_never_run(tmp_path):
    marker = tmp_path / 'PWNED'
    y = tmp_path / 'd.yaml'
    y.write_text(f'path: nowhere\ntrain: images/train\nval: images/val\nnames: [a]\n'
                 f'download: |\n  import pathlib; pathlib.Path("{marker}").touch()\n'
                 f'  https://example.com/data.zip\n')
    with pytest.raises(FileNotFoundError) as e:
        check_dataset(y)
    msg = str(e.value)
    assert 'never downloads' in msg and 'https://example.com/data.zip' in msg
    assert str(tmp_path / 'nowhere' / 'images' / 'val') in msg
    assert not marker.exists()


def test_bundled_yamls_parse(tmp_path):
    data = Path(__file__).resolve().parents[1] / 'data'
    for name, nc in (('coco.yaml', 80), ('coco128.yaml', 80), ('VisDrone.yaml', 10)):
        y = tmp_path / name  # same content, but pointing into an empty folder: must fail cleanly
        y.write_text((data / name).read_text())
        with pytest.raises(FileNotFoundError, match='never downloads'):
            check_dataset(y)
        import yaml
        assert len(yaml.safe_load(y.read_text())['names']) == nc


# ---------------------------------------------------------------- verification
def _bad_dataset(root):
    """One image per failure mode, plus a label file mixing good and bad rows."""
    img, lab = root / 'images', root / 'labels'
    _image(img / 'good.png')
    _label(lab / 'good.txt', '0 0.5 0.5 0.2 0.2\n')
    _image(img / 'mixed.png')
    _label(lab / 'mixed.txt', '\n'.join([
        '0 0.5 0.5 0.2 0.2',  # good
        '1 0.2 0.2 0.1',  # 3 coordinates: neither a box nor a polygon
        '1 0.2 0.2 0.1 0.1 0.3',  # 5 coordinates
        'a 0.2 0.2 0.1 0.1',  # non-numeric
        '1 nan 0.2 0.1 0.1',  # non-finite
        '1 0.2 inf 0.1 0.1',  # non-finite
        '1 1.2 0.2 0.1 0.1',  # out of range
        '1 0.2 0.2 -0.1 0.1',  # out of range
        '1 0.2 0.2 0.0 0.1',  # zero-size
        '-2 0.2 0.2 0.1 0.1',  # negative class
        '-1 0.2 0.2 0.1 0.1',  # negative class
        '1.5 0.2 0.2 0.1 0.1',  # non-integer class
        '0 0.5 0.5 0.2 0.2',  # duplicate of the first row
        '2 0.1 0.1 0.3 0.1 0.3 0.4',  # polygon (triangle): kept as its box
    ]) + '\n')
    _image(img / 'empty.png')
    _label(lab / 'empty.txt', '')
    _image(img / 'nolabel.png')
    (img / 'garbage.jpg').write_bytes(b'not an image' * 50)
    _label(lab / 'garbage.txt', '0 0.5 0.5 0.2 0.2\n')
    _image(img / 'full.png')
    (img / 'truncated.png').write_bytes((img / 'full.png').read_bytes()[:300])
    (img / 'full.png').unlink()
    cv2.imwrite(str(img / 'cut.jpg'), np.full((48, 64, 3), 90, np.uint8))
    (img / 'cut.jpg').write_bytes((img / 'cut.jpg').read_bytes()[:-40])  # truncated JPEG
    _image(img / 'tiny.png', 5, 5)
    _image(img / 'badlabel.png')
    (lab / 'badlabel.txt').write_bytes(b'\xff\xfe\x00garbage\x80\x81')  # not text
    return img


def test_bad_images_and_rows_are_reported_and_dropped(tmp_path, caplog):
    img_dir = _bad_dataset(tmp_path / 'd')
    with caplog.at_level(logging.INFO, logger='yolov5'):
        ds = LoadImagesAndLabels(str(img_dir), img_size=64, nc=3)
    s = ds.scan
    assert (s['found'], s['missing'], s['empty'], s['corrupt']) == (2, 1, 1, 5)
    assert s['dropped_rows'] == 12
    text = caplog.text
    assert '2 found, 1 missing, 1 empty, 5 corrupt, 12 label rows dropped' in text
    for name in ('garbage.jpg', 'truncated.png', 'cut.jpg', 'tiny.png', 'badlabel.txt', 'mixed.txt'):
        assert name in text, name
    for reason in ('odd number of coordinates (lines 2, 3)', 'non-numeric value (line 4)',
                   'non-finite value (lines 5, 6)', 'coordinates outside 0..1 (lines 7, 8)',
                   'zero-size box (line 9)', 'class id not a non-negative integer (lines 10, 11, 12)', 'duplicate row (line 13)'):
        assert reason in text, reason
    kept = sorted(Path(f).name for f in ds.im_files)
    assert kept == ['empty.png', 'good.png', 'mixed.png', 'nolabel.png']
    mixed = ds.labels[[Path(f).name for f in ds.im_files].index('mixed.png')]
    np.testing.assert_allclose(mixed, [[0, 0.5, 0.5, 0.2, 0.2], [2, 0.2, 0.25, 0.2, 0.3]], atol=1e-6)


def test_training_on_bad_data_runs_full_epochs(tmp_path):
    img_dir = _bad_dataset(tmp_path / 'd')
    loader, ds = create_dataloader(str(img_dir), 64, 2, 32, hyp=HYP, augment=True, workers=0, shuffle=True,
                                   nc=3)
    for _ in range(2):
        n_images = 0
        for imgs, targets, paths, _ in loader:
            n_images += len(imgs)
            assert imgs.dtype == torch.uint8 and imgs.shape[1:] == (3, 64, 64)
            assert torch.isfinite(targets).all()
            assert ((targets[:, 1] >= 0) & (targets[:, 1] < 3)).all()
            assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()
            assert all(Path(p).name in {'good.png', 'mixed.png', 'empty.png', 'nolabel.png'} for p in paths)
        assert n_images == 4


def test_image_broken_after_scan_is_replaced_not_fatal(tmp_path, caplog):
    img_dir = _good_split(tmp_path / 'd', n=4)
    loader, ds = create_dataloader(str(img_dir), 64, 4, 32, hyp=HYP, augment=True, workers=0, nc=3)
    (img_dir / '2.png').write_bytes(b'broken later')
    with caplog.at_level(logging.WARNING, logger='yolov5'):
        imgs, targets, paths, _ = next(iter(loader))
    assert len(imgs) == 4 and '2.png' in caplog.text
    assert not any(p.endswith('2.png') for p in paths)


def test_dataset_with_nothing_usable_is_a_clear_error(tmp_path):
    img = tmp_path / 'd' / 'images'
    img.mkdir(parents=True)
    (img / 'a.jpg').write_bytes(b'x' * 100)
    with pytest.raises(DatasetError, match='No usable images'):
        LoadImagesAndLabels(str(img), img_size=64)
    _image(img / 'b.png')  # an image without labels is fine for val, not for training
    LoadImagesAndLabels(str(img), img_size=64)
    with pytest.raises(DatasetError, match='No labels'):
        LoadImagesAndLabels(str(img), img_size=64, augment=True)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetError, match='No images found'):
        LoadImagesAndLabels(str(tmp_path / 'empty'), img_size=64)


# ---------------------------------------------------------------- cache
def test_label_cache_is_reused_and_invalidated(tmp_path):
    img_dir = _good_split(tmp_path / 'd', n=3)
    ds = LoadImagesAndLabels(str(img_dir), img_size=64, nc=3)
    assert not ds.from_cache and ds.cache_path == (tmp_path / 'd' / 'labels' / 'train.cache').resolve()
    assert LoadImagesAndLabels(str(img_dir), img_size=64, nc=3).from_cache
    _label(tmp_path / 'd' / 'labels' / 'train' / '0.txt', '2 0.5 0.5 0.1 0.1\n')  # edit a label
    ds = LoadImagesAndLabels(str(img_dir), img_size=64, nc=3)
    assert not ds.from_cache
    np.testing.assert_allclose(ds.labels[0], [[2, 0.5, 0.5, 0.1, 0.1]])
    with pytest.raises(DatasetError, match='class 2 but nc=2'):  # the cache keeps class ids >= nc ...
        LoadImagesAndLabels(str(img_dir), img_size=64, nc=2)
    assert LoadImagesAndLabels(str(img_dir), img_size=64, nc=4).from_cache  # ... so nc needs no rescan


def test_cache_goes_elsewhere_when_labels_are_read_only(tmp_path, monkeypatch):
    img_dir = _good_split(tmp_path / 'd', n=2)
    labels_dir = tmp_path / 'd' / 'labels'
    real = label_cache.writable_dir
    monkeypatch.setattr(label_cache, 'writable_dir', lambda d: Path(d).resolve() != labels_dir.resolve() and real(d))
    ds = LoadImagesAndLabels(str(img_dir), img_size=64, nc=3)
    assert not (labels_dir / 'train.cache').exists()
    assert str(ds.cache_path).startswith(str(tmp_path / 'user-cache'))
    assert LoadImagesAndLabels(str(img_dir), img_size=64, nc=3).from_cache


def test_cache_file_holds_no_pickles(tmp_path):
    img_dir = _good_split(tmp_path / 'd', n=2)
    ds = LoadImagesAndLabels(str(img_dir), img_size=64, nc=3)
    with np.load(ds.cache_path, allow_pickle=False) as z:
        assert len(z['im_files']) == 2 and z['labels'].shape == (4, 5)


# ---------------------------------------------------------------- batches
def test_batch_format_and_val_shapes(tmp_path):
    img_dir = _good_split(tmp_path / 'd', n=3, w=100, h=50)
    loader, ds = create_dataloader(str(img_dir), 64, 2, 32, rect=True, pad=0.5, workers=0, nc=3)
    imgs, targets, paths, shapes = next(iter(loader))
    # 100x50 -> 64x32; rect shape ceil((0.5, 1) * 64 / 32 + 0.5) * 32 = (64, 96), as YOLOv5 val pads it
    assert imgs.shape == (2, 3, 64, 96) and imgs.dtype == torch.uint8
    assert targets.shape == (4, 6) and targets[:, 0].tolist() == [0, 0, 1, 1]
    (h0, w0), ((gh, gw), (padw, padh)) = shapes[0]
    assert (h0, w0) == (50, 100) and (gh, gw) == (32 / 50, 64 / 100) and (padw, padh) == (16.0, 16.0)
    # a label box maps to where the pixels went: centre (0.5, 0.5) of the original -> centre of the input
    t = targets[targets[:, 0] == 0]
    assert t[0, 2:4].tolist() == pytest.approx([0.5, 0.5])
    assert t[0, 4:6].tolist() == pytest.approx([0.4 * 64 / 96, 0.3 * 32 / 64], abs=1e-3)
    assert ds.shapes.tolist() == [[100, 50]] * 3 and ds.batch_shapes.tolist() == [[64, 96], [64, 96]]
    assert (imgs[0, :, :16] == 114).all() and (imgs[0, :, :, :16] == 114).all()  # grey letterbox borders


def test_grayscale_png_loads_as_three_channels(tmp_path):
    _image(tmp_path / 'd' / 'images' / 'g.png', 64, 64, channels=1)
    _label(tmp_path / 'd' / 'labels' / 'g.txt', '0 0.5 0.5 0.2 0.2\n')
    _, ds = create_dataloader(str(tmp_path / 'd' / 'images'), 64, 1, 32, workers=0)
    img = ds[0][0]
    assert img.shape == (3, 64, 64) and torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])


def _epoch(loader):
    return [(imgs.clone(), targets.clone()) for imgs, targets, _, _ in loader]


def test_same_seed_same_batches_whatever_the_workers(tmp_path):
    img_dir = _good_split(tmp_path / 'd', n=6)
    runs = []
    for workers, seed in ((0, 1), (2, 1), (0, 2)):
        loader, _ = create_dataloader(str(img_dir), 64, 3, 32, hyp=HYP, augment=True, workers=workers,
                                      shuffle=True, seed=seed, nc=3)
        runs.append([_epoch(loader), _epoch(loader)])
    same = lambda a, b: all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert same(runs[0][0], runs[1][0]) and same(runs[0][1], runs[1][1])  # 0 vs 2 workers, both epochs
    assert not same(runs[0][0], runs[0][1])  # the next epoch is augmented differently
    assert not same(runs[0][0], runs[2][0])  # another seed gives other batches


def test_close_mosaic_reaches_persistent_workers(tmp_path):
    img_dir = _good_split(tmp_path / 'd', n=4, w=64, h=32)
    hyp = dict(HYP, scale=0.0, translate=0.0, degrees=0.0, shear=0.0, mixup=0.0, copy_paste=0.0, fliplr=0.0,
               flipud=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    loader, ds = create_dataloader(str(img_dir), 64, 4, 32, hyp=hyp, augment=True, workers=2, nc=3)
    grey_rows = lambda imgs: (imgs == 114).all(dim=(1, 3)).sum().item()  # letterbox pads top and bottom
    next(iter(loader))
    ds.close_mosaic()
    imgs, _, _, shapes = next(iter(loader))
    assert all(s is not None for s in shapes)  # letterboxed, not mosaicked
    assert grey_rows(imgs) >= 4 * 30


def test_distributed_sampler_shards_and_keeps_keys(tmp_path):
    img_dir = _good_split(tmp_path / 'd', n=5)
    ds = LoadImagesAndLabels(str(img_dir), img_size=64, nc=3)
    shards = [list(DistributedKeySampler(ds, num_replicas=2, rank=r, shuffle=True, seed=3)) for r in (0, 1)]
    idx = [k[0] for s in shards for k in s]
    assert len(shards[0]) == len(shards[1]) == 3 and set(idx) == set(range(5))
    assert all(k[1] == 0 and k[2] is False for s in shards for k in s)


def test_cache_ram_and_disk_give_the_same_images(tmp_path):
    img_dir = _good_split(tmp_path / 'd', n=3, w=80, h=40)
    base = LoadImagesAndLabels(str(img_dir), img_size=64)
    for mode in ('ram', 'disk'):
        ds = LoadImagesAndLabels(str(img_dir), img_size=64, cache_images=mode)
        for i in range(3):
            assert torch.equal(ds[i][0], base[i][0])
    assert len(list(img_dir.glob('*.npy'))) == 3


@pytest.mark.skipif(not (SHARED / 'datasets' / 'coco128').exists(), reason='shared coco128 not available')
def test_coco128_counts_and_nothing_written_to_shared(tmp_path):
    d = check_dataset(SHARED / 'datasets' / 'coco128' / 'coco128.yaml')
    before = sorted(p.name for p in (SHARED / 'datasets' / 'coco128' / 'labels').iterdir())
    _, ds = create_dataloader(d['train'], 320, 16, 32, rect=True, pad=0.5, workers=0, nc=d['nc'])
    assert len(ds) == 128 and sum(len(lb) for lb in ds.labels) == 929
    assert (ds.scan['found'], ds.scan['missing'], ds.scan['corrupt']) == (126, 2, 0)
    assert sorted(p.name for p in (SHARED / 'datasets' / 'coco128' / 'labels').iterdir()) == before
    assert str(ds.cache_path).startswith(str(tmp_path))
    assert ds.batch_shapes.max() == 352 and (ds.batch_shapes % 32 == 0).all()


# ---------------------------------------------------------------- class ids vs nc
def _four_class_split(root, n=4):
    """n images, image i has one box of every class 0..3 (plus class i+2 on image i for variety)."""
    for i in range(n):
        _image(root / 'images' / f'{i}.png', seed=i)
        rows = [f'{c} {0.2 + 0.15 * c:.2f} 0.5 0.1 0.1' for c in range(4)] + [f'{i + 2} 0.5 0.2 0.1 0.1']
        _label(root / 'labels' / f'{i}.txt', '\n'.join(rows) + '\n')
    return root / 'images'


@pytest.mark.parametrize('nc', [1, 6])
def test_single_cls_keeps_every_box_as_class_0(tmp_path, nc):
    img_dir = _four_class_split(tmp_path / 'd')
    _, ds = create_dataloader(str(img_dir), 64, 2, 32, workers=0, single_cls=True, nc=nc)  # trainer/val pass nc=1
    assert [len(lb) for lb in ds.labels] == [5] * 4 and ds.scan['dropped_rows'] == 0
    assert all((lb[:, 0] == 0).all() for lb in ds.labels)


def test_too_few_classes_in_yaml_stops_with_one_line(tmp_path):
    img_dir = _four_class_split(tmp_path / 'd')  # classes 0..5
    with pytest.raises(DatasetError) as e:
        create_dataloader(str(img_dir), 64, 2, 32, hyp=HYP, augment=True, workers=0, nc=3, prefix='train: ')
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('train: ')
    assert 'class 5 but nc=3' in msg and str(tmp_path / 'd' / 'labels' / '0.txt') in msg and 'set nc/names' in msg
    _, ds = create_dataloader(str(img_dir), 64, 2, 32, workers=0, nc=6)  # enough classes: every box kept
    assert sum(len(lb) for lb in ds.labels) == 20 and ds.scan['dropped_rows'] == 0


# ---------------------------------------------------------------- --cache disk files
def test_disk_cache_write_is_atomic(tmp_path, monkeypatch):
    img_dir = _good_split(tmp_path / 'd', n=2)
    real_save = np.save

    def interrupted_save(f, arr, *args, **kwargs):  # writes part of the file, then dies
        with open(f, 'wb') if isinstance(f, (str, Path)) else open(f.fileno(), 'wb', closefd=False) as out:
            out.write(b'\x93NUMPY partial')
        raise OSError('disk full')

    monkeypatch.setattr(np, 'save', interrupted_save)
    LoadImagesAndLabels(str(img_dir), img_size=64, cache_images='disk')
    assert sorted(p.name for p in img_dir.iterdir()) == ['0.png', '1.png']  # no truncated .npy, no temp file
    monkeypatch.setattr(np, 'save', real_save)
    LoadImagesAndLabels(str(img_dir), img_size=64, cache_images='disk')
    assert len(list(img_dir.glob('*.npy'))) == 2


def test_truncated_npy_is_rebuilt_not_fatal(tmp_path, caplog):
    img_dir = _good_split(tmp_path / 'd', n=3, w=80, h=40)
    base = LoadImagesAndLabels(str(img_dir), img_size=64)
    LoadImagesAndLabels(str(img_dir), img_size=64, cache_images='disk')
    npy = img_dir / '1.npy'
    full = npy.read_bytes()
    npy.write_bytes(full[:200])  # an interrupted write of an older version; newer than the image
    with caplog.at_level(logging.WARNING, logger='yolov5'):
        ds = LoadImagesAndLabels(str(img_dir), img_size=64, cache_images='disk')
    assert '1.npy' in caplog.text and npy.read_bytes() == full
    assert torch.equal(ds[1][0], base[1][0])
    np.save(img_dir / '2.npy', np.zeros((5, 5, 3), np.uint8))  # wrong shape (e.g. another image's name twin)
    ds = LoadImagesAndLabels(str(img_dir), img_size=64, cache_images='disk')
    assert torch.equal(ds[2][0], base[2][0])
    npy.write_bytes(full[:100])  # goes bad while training: the sample still loads and the file is rewritten
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='yolov5'):
        assert torch.equal(ds[1][0], base[1][0])
    assert 'bad --cache disk file' in caplog.text and npy.read_bytes() == full


# ---------------------------------------------------------------- YAML errors
def test_yaml_syntax_error_is_one_line(tmp_path):
    y = tmp_path / 'x.yaml'
    y.write_text('path: .\ntrain: [images/train\nval: images/val\nnames: [a]\n')
    with pytest.raises(DatasetError) as e:
        check_dataset(y)
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith(f'{y} is not valid YAML (line 3): ') and msg.endswith('fix the file')


def test_yaml_python_tag_is_refused_and_never_run(tmp_path):
    marker = tmp_path / 'PWNED'
    y = tmp_path / 'x.yaml'
    y.write_text(f'path: .\ntrain: a\nval: a\nnames: [a]\n'
                 f'x: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(DatasetError) as e:
        check_dataset(y)
    msg = str(e.value)
    assert '\n' not in msg and '(line 5)' in msg and 'tag !!python/object/apply:os.system is refused' in msg
    assert not marker.exists()


def test_bundled_coco_yaml_points_beside_the_repo():
    """data/coco.yaml finds COCO in <repo>/../datasets/coco (YOLOv5's layout), as README says."""
    root = Path(__file__).resolve().parents[1]
    expected = root.parent / 'datasets' / 'coco'
    try:
        assert check_dataset('coco.yaml')['path'] == str(expected.resolve())
    except FileNotFoundError as e:
        assert f'(dataset root {expected.resolve()})' in str(e)


# ---------------------------------------------------------------- scan in processes
def test_scan_in_processes_matches_in_process(tmp_path, monkeypatch):
    n = 2 * label_cache.MIN_FILES_FOR_PROCESSES
    im_files, lb_files = [], []
    for i in range(n):
        im = tmp_path / 'images' / f'{i}.png'
        _image(im, 16, 12, seed=i)
        im_files.append(str(im))
        lb_files.append(str(tmp_path / 'labels' / f'{i}.txt'))
        if i % 7:  # some images without labels, some with a bad row
            _label(Path(lb_files[-1]), f'{i % 5} 0.5 0.5 0.2 0.2\n' + ('1 2 3\n' if i % 3 == 0 else ''))
    (tmp_path / 'images' / '5.png').write_bytes(b'corrupt')
    pools = []
    real_pool = label_cache.ProcessPoolExecutor
    monkeypatch.setattr(label_cache, 'NUM_THREADS', 2)
    monkeypatch.setattr(label_cache, 'ProcessPoolExecutor', lambda *a, **k: pools.append(1) or real_pool(*a, **k))
    in_processes = label_cache.scan_files(im_files, lb_files)
    assert pools == [1]
    monkeypatch.setattr(label_cache, 'MIN_FILES_FOR_PROCESSES', n + 1)
    in_process = label_cache.scan_files(im_files, lb_files)
    assert pools == [1]
    key = lambda r: (r.im_file, r.status, r.labels.tobytes(), r.shape, r.dropped_rows, r.message)
    assert [key(r) for r in in_processes] == [key(r) for r in in_process]
    assert {r.status for r in in_process} == {'found', 'missing', 'corrupt'}


def test_rect_batches_under_ddp_are_whole_per_rank(tmp_path):
    """--rect under torchrun: every batch a rank makes holds images of one rectangular batch (one shape)."""
    from utils.datasets import DistributedRectSampler
    root = tmp_path / 'rect'
    sizes = [(64, 32), (64, 48), (48, 64), (32, 64), (64, 64), (64, 40), (40, 64)] * 2  # (w, h), 14 images
    for i, (w, h) in enumerate(sizes):
        _image(root / "images" / f"{i}.jpg", w, h, seed=i)
        _label(root / "labels" / f"{i}.txt", "0 0.5 0.5 0.2 0.2")
    rank_batch = 3  # 14 images -> 5 batches of 3 (the last one short)
    ds = LoadImagesAndLabels(str(root / 'images'), img_size=64, batch_size=rank_batch, rect=True, stride=32)
    keys = [list(DistributedRectSampler(ds, rank_batch, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(keys[0]) == len(keys[1]) == 3 * rank_batch  # 5 batches -> 3 per rank, padded with a repeat
    seen = set()
    for rank_keys in keys:
        for start in range(0, len(rank_keys), rank_batch):
            group = [k[0] for k in rank_keys[start:start + rank_batch]]
            assert len({int(ds.batch[i]) for i in group}) == 1, group  # one rect batch -> one shape
            seen.update(group)
            shapes = {tuple(ds[(i, 0, False)][0].shape) for i in group}
            assert len(shapes) == 1, shapes
    assert seen == set(range(len(sizes)))
