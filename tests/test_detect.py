"""detect.py end to end on tiny inputs: folders, videos, label files, crops and bad input."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import detect
from utils.cli import UserError
from models.checkpoint import model_checkpoint_fields, save_checkpoint
from models.yolo import Model

ROOT = Path(__file__).resolve().parents[1]
NAMES = ['cat', 'dog', 'bird']


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """A random-weight yolov5n checkpoint with 3 named classes, saved in the project format."""
    model = Model('yolov5n.yaml', nc=3)
    model.names = list(NAMES)
    return save_checkpoint(tmp_path_factory.mktemp('w') / 'tiny.pt', model_checkpoint_fields(model))


def _noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / 'images'
    d.mkdir()
    cv2.imwrite(str(d / 'wide.jpg'), _noise(96, 128, 0))
    cv2.imwrite(str(d / 'tall.png'), _noise(80, 48, 1))
    return d


def _write_video(path, frames=5, size=64):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 5, (size, size))
    if not writer.isOpened():
        pytest.skip('this OpenCV build cannot write mp4v video')
    for i in range(frames):
        writer.write(_noise(size, size, 10 + i))
    writer.release()
    return path


def _rows(file):
    return [list(map(float, line.split())) for line in Path(file).read_text().splitlines()]


def _check_label_file(file, nc, with_conf, max_rows):
    rows = _rows(file)
    assert 0 < len(rows) <= max_rows
    for r in rows:
        assert len(r) == (6 if with_conf else 5), r
        assert r[0] == int(r[0]) and 0 <= r[0] < nc
        xc, yc, w, h = r[1:5]
        assert 0 <= xc <= 1 and 0 <= yc <= 1 and 0 <= w <= 1 and 0 <= h <= 1
        assert xc - w / 2 >= -1e-6 and xc + w / 2 <= 1 + 1e-6  # inside the image after clipping
        if with_conf:
            assert 0 <= r[5] <= 1
    return rows


def test_folder_and_video(weights, image_dir, tmp_path):
    video = _write_video(tmp_path / 'clip.mp4')
    save_dir = detect.run(weights=weights, source=[str(image_dir), str(video)], imgsz=64, conf_thres=0.0,
                          max_det=10, save_txt=True, save_conf=True, project=tmp_path / 'runs', name='exp')
    assert save_dir == tmp_path / 'runs' / 'exp'
    for name in ('wide.jpg', 'tall.png'):
        annotated = cv2.imread(str(save_dir / name))
        assert annotated.shape == cv2.imread(str(image_dir / name)).shape
        _check_label_file(save_dir / 'labels' / f'{Path(name).stem}.txt', 3, True, 10)
    cap = cv2.VideoCapture(str(save_dir / 'clip.mp4'))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 5
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 64)
    frame_labels = sorted(p.name for p in (save_dir / 'labels').glob('clip_*.txt'))
    assert frame_labels == [f'clip_{i}.txt' for i in range(1, 6)]  # numbered from 1, as YOLOv5
    for f in frame_labels:
        _check_label_file(save_dir / 'labels' / f, 3, True, 10)


def test_second_run_increments_folder(weights, image_dir, tmp_path):
    kw = dict(weights=weights, source=str(image_dir / 'wide.jpg'), imgsz=64, project=tmp_path, name='exp')
    assert detect.run(**kw).name == 'exp'
    assert detect.run(**kw).name == 'exp2'
    assert detect.run(**kw, exist_ok=True).name == 'exp'


def test_labels_are_normalised_to_the_original_image(weights, tmp_path):
    """A 2x nearest-upscaled copy letterboxes to the same network input: same normalised boxes."""
    small = _noise(48, 64, 3)
    big = cv2.resize(small, (128, 96), interpolation=cv2.INTER_NEAREST)
    for name, im in (('small', small), ('big', big)):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / 'im.png'), im)
    out = {name: detect.run(weights=weights, source=str(tmp_path / name), imgsz=64, conf_thres=0.0,
                            max_det=20, save_txt=True, nosave=True, project=tmp_path / 'runs', name=name)
           for name in ('small', 'big')}
    a = np.array(_rows(out['small'] / 'labels' / 'im.txt'))
    b = np.array(_rows(out['big'] / 'labels' / 'im.txt'))
    assert a.shape == b.shape and len(a) > 0
    assert (a[:, 0] == b[:, 0]).all()
    assert np.abs(a[:, 1:] - b[:, 1:]).max() <= 1.01 / 48  # only pixel rounding differs


def test_classes_max_det_crops_nosave(weights, image_dir, tmp_path):
    save_dir = detect.run(weights=weights, source=str(image_dir), imgsz=64, conf_thres=0.0, classes=[1],
                          max_det=3, save_txt=True, save_crop=True, nosave=True, project=tmp_path, name='exp')
    assert not list(save_dir.glob('*.jpg')) and not list(save_dir.glob('*.png'))  # --nosave
    for f in (save_dir / 'labels').glob('*.txt'):
        rows = _check_label_file(f, 3, False, 3)
        assert {r[0] for r in rows} == {1}
    crops = list((save_dir / 'crops').rglob('*.jpg'))
    assert crops and {c.parent.name for c in crops} == {'dog'}
    assert all(cv2.imread(str(c)) is not None for c in crops)


def test_yaml_weights_smoke(image_dir, tmp_path):
    save_dir = detect.run(weights='yolov5n.yaml', source=str(image_dir / 'tall.png'), imgsz=64,
                          conf_thres=0.0, max_det=5, hide_conf=True, project=tmp_path, name='exp')
    assert cv2.imread(str(save_dir / 'tall.png')).shape == (80, 48, 3)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(source='does/not/exist.jpg'), FileNotFoundError, 'does not exist'),
    (dict(classes=[7]), ValueError, 'out of range'),
    (dict(conf_thres=1.5), ValueError, 'conf-thres'),
    (dict(source='rtsp://camera/stream'), ValueError, 'not supported'),
])
def test_bad_input(weights, image_dir, tmp_path, kwargs, error, match):
    kw = dict(weights=weights, source=str(image_dir), imgsz=64, project=tmp_path, name='exp')
    with pytest.raises(error, match=match):
        detect.run(**{**kw, **kwargs})


def test_folder_without_images(weights, tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'readme.md').write_text('no images here')
    with pytest.raises(ValueError, match='no images or videos'):
        detect.run(weights=weights, source=str(tmp_path / 'docs'), project=tmp_path, name='exp')


def test_view_img_refused_when_headless(weights, image_dir, tmp_path, monkeypatch):
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    monkeypatch.setattr(sys, 'platform', 'linux')
    with pytest.raises(UserError, match='headless'):
        detect.run(weights=weights, source=str(image_dir), view_img=True, project=tmp_path, name='exp')


def test_cli_txt_list_and_clear_error(weights, image_dir, tmp_path):
    listing = tmp_path / 'list.txt'
    listing.write_text('images/wide.jpg\n\n' + str(image_dir / 'tall.png') + '\n')  # relative + absolute
    cmd = [sys.executable, 'detect.py', '--weights', str(weights), '--imgsz', '64', '--project', str(tmp_path),
           '--source', str(listing)]
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / 'exp' / 'wide.jpg').is_file() and (tmp_path / 'exp' / 'tall.png').is_file()
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / 'missing')], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0
    assert 'does not exist' in bad.stderr and 'Traceback' not in bad.stderr
