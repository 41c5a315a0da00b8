"""Shared test set-up: one intra-op thread (2-core machines; OpenMP spin-waits make oversubscribed tests crawl)
and no network or run-time installs from Ultralytics."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")

import torch  # noqa: E402

torch.set_num_threads(1)
