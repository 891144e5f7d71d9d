"""data/scripts converters: COCO JSON and VisDrone annotations to YOLO labels."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / 'data' / 'scripts'


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(path):
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines()]


@pytest.mark.parametrize('script', ['coco2yolo.py', 'visdrone2yolo.py'])
def test_help(script):
    r = subprocess.run([sys.executable, str(SCRIPTS / script), '--help'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and 'usage' in r.stdout.lower() and '--out' in r.stdout


# ---------------------------------------------------------------- COCO
def _coco_json(path):
    data = {
        'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 200, 'height': 100},
                   {'id': 2, 'file_name': 'sub/b.jpg', 'width': 50, 'height': 50}],
        'categories': [{'id': i, 'name': f'c{i}'} for i in (1, 13, 90)],
        'annotations': [
            {'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [10, 20, 40, 30], 'iscrowd': 0},
            {'id': 2, 'image_id': 1, 'category_id': 13, 'bbox': [180, 90, 40, 20], 'iscrowd': 0},  # runs off
            {'id': 3, 'image_id': 1, 'category_id': 90, 'bbox': [0, 0, 100, 100], 'iscrowd': 1},  # crowd
            {'id': 4, 'image_id': 1, 'category_id': 12, 'bbox': [0, 0, 5, 5], 'iscrowd': 0},  # unused id
            {'id': 5, 'image_id': 1, 'category_id': 1, 'bbox': [5, 5, 0, 10], 'iscrowd': 0},  # empty
        ]}
    path.write_text(json.dumps(data))
    return path


def test_coco_to_yolo_maps_classes_and_skips_crowd(tmp_path):
    coco = _load('coco2yolo')
    assert len(coco.COCO80_IDS) == 80 and coco.coco91_to_coco80()[90] == 79 and coco.coco91_to_coco80()[13] == 11
    stats = coco.convert(_coco_json(tmp_path / 'i.json'), tmp_path / 'labels')
    assert (stats['boxes'], stats['crowd'], stats['unknown_class'], stats['empty_box']) == (2, 1, 1, 1)
    rows = _rows(tmp_path / 'labels' / 'a.txt')
    np.testing.assert_allclose(rows[0], [0, 30 / 200, 35 / 100, 40 / 200, 30 / 100])
    np.testing.assert_allclose(rows[1], [11, 190 / 200, 95 / 100, 20 / 200, 10 / 100])  # clipped to the image
    assert (tmp_path / 'labels' / 'b.txt').read_text() == ''  # background image: empty label file


def test_coco_sorted_mode_and_cli(tmp_path):
    j = _coco_json(tmp_path / 'i.json')
    r = subprocess.run([sys.executable, str(SCRIPTS / 'coco2yolo.py'), '--json', str(j), '--out',
                        str(tmp_path / 'out'), '--classes', 'sorted', '--no-empty'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert '1 crowd' in r.stdout
    assert [int(r[0]) for r in _rows(tmp_path / 'out' / 'a.txt')] == [0, 1]  # ids 1, 13 -> 0, 1
    assert not (tmp_path / 'out' / 'b.txt').exists()


# ---------------------------------------------------------------- VisDrone
def _visdrone_split(root):
    (root / 'images').mkdir(parents=True)
    (root / 'annotations').mkdir()
    cv2.imwrite(str(root / 'images' / 'x.jpg'), np.zeros((100, 200, 3), np.uint8))
    (root / 'annotations' / 'x.txt').write_text('\n'.join([
        '10,10,20,40,1,1,0,0',  # pedestrian -> 0
        '100,50,50,30,1,10,0,1,',  # motor -> 9 (trailing comma as in some files)
        '0,60,60,40,0,0,0,0',  # ignored region
        '5,65,20,20,1,4,0,0',  # car fully inside the ignored region: dropped
        '40,70,40,20,1,4,0,0',  # car half inside the region: the benchmark drops it at >= 50%
        '50,70,40,20,1,5,0,0',  # van 10/40 inside: kept -> 4
        '150,5,30,30,1,11,0,0',  # others: dropped
        '150,40,30,10,0,3,0,0',  # score 0: ignored by the benchmark, dropped
        '190,90,30,30,1,6,1,0',  # truck running off the image: clipped -> 5
    ]) + '\n')
    return root


def test_visdrone_to_yolo_follows_benchmark_rules(tmp_path):
    vis = _load('visdrone2yolo')
    totals = vis.convert_split(_visdrone_split(tmp_path / 'VisDrone2019-DET-val'))
    rows = _rows(tmp_path / 'VisDrone2019-DET-val' / 'labels' / 'x.txt')
    assert [int(r[0]) for r in rows] == [0, 9, 4, 5]
    np.testing.assert_allclose(rows[0][1:], [20 / 200, 30 / 100, 20 / 200, 40 / 100])
    np.testing.assert_allclose(rows[3][1:], [195 / 200, 95 / 100, 10 / 200, 10 / 100])
    assert (totals['regions'], totals['others'], totals['ignore_flag'], totals['in_ignored']) == (1, 1, 1, 2)


def test_visdrone_cli_reports_missing_folders(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPTS / 'visdrone2yolo.py'), '--root', str(tmp_path / 'nope')],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and 'annotations/ and images/' in r.stderr
    split = _visdrone_split(tmp_path / 's')
    r = subprocess.run([sys.executable, str(SCRIPTS / 'visdrone2yolo.py'), '--root', str(split), '--out',
                        str(tmp_path / 'lbl')], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and (tmp_path / 'lbl' / 'x.txt').exists() and '4 boxes' in r.stdout


def test_visdrone_cli_converts_every_split_in_a_parent_folder(tmp_path):
    for name in ('VisDrone2019-DET-train', 'VisDrone2019-DET-val'):
        _visdrone_split(tmp_path / 'VisDrone' / name)
    r = subprocess.run([sys.executable, str(SCRIPTS / 'visdrone2yolo.py'), '--root', str(tmp_path / 'VisDrone')],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in ('VisDrone2019-DET-train', 'VisDrone2019-DET-val'):
        assert len(_rows(tmp_path / 'VisDrone' / name / 'labels' / 'x.txt')) == 4
