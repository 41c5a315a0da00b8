"""Shared test set-up: one intra-op thread (2-core machines; OpenMP spin-waits make oversubscribed tests crawl)
and no network or run-time installs from Ultralytics."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
# Runtime exports (ONNX/OpenVINO) go to a throw-away cache, never the user's ~/.cache/blurdet.
os.environ["BLURDET_CACHE"] = tempfile.mkdtemp(prefix="blurdet-test-cache-")
atexit.register(shutil.rmtree, os.environ["BLURDET_CACHE"], ignore_errors=True)

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture
def restore_threads():
    """The pipeline's runner sets torch's process-wide thread count (cfg.threads); put back the test session's."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
