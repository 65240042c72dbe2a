# Quick start: `make demo` (the main job) and `make test` (the whole suite).
# Both create or update .venv by themselves and install Fashion-MNIST when it is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
# torch is pinned and installed first, from the local CPU wheel folder when there is one,
# otherwise from PyTorch's CPU index: never the multi-GB CUDA build.
TORCH := torch==2.13.0
TORCH_SOURCE := $(if $(wildcard /opt/wheels/torch-2.13.0*),--find-links /opt/wheels,--index-url https://download.pytorch.org/whl/cpu)

.PHONY: demo test venv data cxx net curl browser bench proto clean

demo: $(STAMP) data
	$(BIN)/edgesplit demo

test: $(STAMP) data cxx net curl browser
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SOURCE) $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

data:
	@if [ -f $(FMNIST_DIR)/t10k-images-idx3-ubyte.gz ] || [ -f $(FMNIST_DIR)/t10k-images-idx3-ubyte ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "Fashion-MNIST missing: installing the Debian package dataset-fashion-mnist"; \
		apt-get install -y dataset-fashion-mnist >/dev/null || { apt-get update >/dev/null && apt-get install -y dataset-fashion-mnist >/dev/null; }; \
	else \
		echo "Fashion-MNIST is missing. Install it with:  sudo apt-get install dataset-fashion-mnist"; exit 1; \
	fi

# g++ compiles the generated accelerator's C simulation (`edgesplit hls --csim`, tests/hls/test_hls.py)
cxx:
	@if command -v g++ >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "g++ missing: installing the Debian package g++"; \
		apt-get install -y g++ >/dev/null || { apt-get update >/dev/null && apt-get install -y g++ >/dev/null; }; \
	else \
		echo "g++ is missing. Install it with:  sudo apt-get install g++"; exit 1; \
	fi

# ip and tc (iproute2) make the testbed's namespaces and shaped links (`edgesplit testbed`, tests/test_testbed.py)
net:
	@if command -v ip >/dev/null && command -v tc >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "ip/tc missing: installing the Debian package iproute2"; \
		apt-get install -y iproute2 >/dev/null || { apt-get update >/dev/null && apt-get install -y iproute2 >/dev/null; }; \
	else \
		echo "ip/tc are missing (the testbed tests are skipped without root anyway): sudo apt-get install iproute2"; \
	fi

# curl talks to the HTTP/REST API as a user would (tests/runtime/test_http.py)
curl:
	@if command -v curl >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "curl missing: installing the Debian package curl"; \
		apt-get install -y curl >/dev/null || { apt-get update >/dev/null && apt-get install -y curl >/dev/null; }; \
	else \
		echo "curl is missing (its checks are skipped): sudo apt-get install curl"; \
	fi

# chromium and its driver open `serve --dashboard` in a real browser (tests/runtime/test_dashboard.py, Selenium)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "chromium missing: installing the Debian packages chromium and chromium-driver"; \
		apt-get install -y chromium chromium-driver >/dev/null || { apt-get update >/dev/null && apt-get install -y chromium chromium-driver >/dev/null; }; \
	else \
		echo "chromium is missing (the dashboard's browser test is skipped): sudo apt-get install chromium chromium-driver"; \
	fi

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=src --grpc_python_out=src src/edgesplit/runtime/transport/kserve_v2.proto
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=src src/edgesplit/runtime/onnx_subset.proto

clean:
	rm -rf $(VENV) runs/demo .pytest_cache
