"""YOLOv5 model definition (common.py, yolo.py) and checkpoint I/O (checkpoint.py)."""
