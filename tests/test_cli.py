"""Entry scripts answer bad input with one clear line and exit code 2 (usage/config) or 1 (run), no traceback."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval_detection  # noqa: E402
import train_deblur  # noqa: E402


@pytest.mark.parametrize("argv,needle", [
    (["batchh=3"], "Did you mean 'batch_size'"),
    (["--config", "configs/kernel_train.yaml", "sources=[no/such/dir/*.jpg]"], "No files match the glob"),
    (["--config", "configs/kernel_train.yaml", "crop=16"], "'crop'"),
    (["--config", "no/such.yaml"], "no/such.yaml"),
])
def test_train_deblur_config_errors(argv, needle, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert train_deblur.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and "--debug" in err


def test_train_deblur_debug_shows_the_traceback(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match="batch_size"):
        train_deblur.main(["--debug", "batchh=3"])


def test_eval_detection_errors(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    assert eval_detection.main(["blurred_vs_deblurred", "deblur.weightz=x"]) == 2
    assert "Did you mean 'weights'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        eval_detection.main(["blurred_vs_deblurred", "--limit", "-3"])
    assert e.value.code == 2 and "--limit must be >= 0" in capsys.readouterr().err
    code = eval_detection.main(["blurred_vs_deblurred", f"out={tmp_path}", "data.sources=[no/such/*.jpg]", "methods=[]"])
    err = capsys.readouterr().err
    assert code == 1 and "no/such" in err and "Traceback" not in err
