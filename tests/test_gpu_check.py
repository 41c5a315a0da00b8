"""bench/gpu_check.sh rehearsed on the CPU: every step's command parses, starts and finishes at tiny sizes, and
the JSON report is written (the real run needs a lent GPU)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_rehearsal_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {r["step"]: r for r in report["steps"]}
    assert {"gpu_tests", "pipeline", "realtime", "train_kernel", "train_bf16_gan", "train_bf16_gan_resume",
            "train_fp16_double_gan", "streams", "refiner_cost"} <= set(steps)
    failed = {name: r["tail"][-600:] for name, r in steps.items() if r["rc"] != 0}
    assert not failed, failed
    summary = json.loads((tmp_path / "pipeline_summary.json").read_text())
    assert summary["frames_out"] == 6
