# The two set-up commands: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
TRITON_VENV ?= .venv-triton
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test cpp bench-report peers-venv clean

CMAKE_CONFIGURE = cmake -S cpp -B build/cpp -DCMAKE_BUILD_TYPE=Release \
	-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Installs go through uv (measured in a fresh clone: both test environments in 48 s, against 5.2 min with pip).
# torch==2.13.0 is pinned in pyproject.toml: its CPU build lies on disk in /opt/wheels, which pip reads from its
# own configuration and uv only when told (--find-links); any other version downloads gigabytes.
UV := $(VENV)/bin/uv
UV_INSTALL = $(UV) pip install -q $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels) --python
$(UV): | $(PY)
	$(PIP) install uv

$(VENV)/.demo-installed: pyproject.toml | $(UV)
	$(UV_INSTALL) $(PY) -e '.[demo]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(UV) $(TRITON_VENV)/.installed
	$(UV_INSTALL) $(PY) -e '.[demo,test]'
	touch $@ $(VENV)/.demo-installed  # the test extra holds the demo one

# The Triton tests' server side (tests/triton_server.py): the tritonserver binary and Python backend from the
# nvidia-pytriton wheel (its Python package is not used, so no dependencies), and the environment Triton's Python
# backend runs torchship in. That stub (Triton 2.51) reads tensors wrongly under numpy 2, hence numpy<2 here.
# The packages are the runtime's share of pyproject's dependencies (no transformers: the runtime never imports it;
# onnxruntime runs the default artifacts' ONNX graph, openvino an artifact's OpenVINO IR).
$(TRITON_VENV)/.installed: pyproject.toml | $(UV)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(UV_INSTALL) $(TRITON_VENV)/bin/python torch==2.13.0 'numpy<2' \
		'tokenizers>=0.20' 'safetensors>=0.4' 'huggingface-hub>=0.30' 'tqdm>=4.66' 'onnxruntime>=1.20' \
		'openvino>=2025.1'
	$(UV_INSTALL) $(TRITON_VENV)/bin/python --no-deps -e . 'nvidia-pytriton==0.7.0'
	touch $@

demo: $(VENV)/.demo-installed
	@# Bytecode is written even where PYTHONDONTWRITEBYTECODE is set, as for `make test`: about 20 s less per process.
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/torchship export demo artifacts/minilm --overwrite
	env -u PYTHONDONTWRITEBYTECODE $(PY) examples/seed_demo.py artifacts/minilm

test: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	@# Bytecode is written as modules are first imported, even where PYTHONDONTWRITEBYTECODE is set (as on this
	@# project's machines): otherwise every test worker, server, Triton stub and Ray worker compiles all it imports
	@# (measured: pytest 19.7 -> 17.2 min). Compiling at install instead (uv --compile-bytecode) compiled every
	@# module of both environments, 86 s on 2 cores, most of it never imported.
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -n 3 --dist loadgroup  # conftest.py: 3 workers on 2 cores, a module each

# The libtorch consumer: links the libtorch inside the torch wheel (installed into .venv first, so it works on a
# fresh clone); installs cmake, nlohmann-json and OpenSSL's headers from Debian if missing.
cpp: $(VENV)/.demo-installed
	@command -v cmake >/dev/null && test -f /usr/include/nlohmann/json.hpp && test -f /usr/include/openssl/evp.h || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake nlohmann-json3-dev libssl-dev >/dev/null)
	@mkdir -p build
	@# CMake's log goes to build/cpp-configure.log and is printed when configuring fails. One CI run saw CMake fail
	@# to identify the compiler ("No known features for CXX compiler", id "") in a fresh build/cpp while the other
	@# test worker was busy; a second configure from a clean directory is allowed before giving up.
	@$(CMAKE_CONFIGURE) >build/cpp-configure.log 2>&1 || { \
		echo "configuring build/cpp failed; retrying from a clean build/cpp. First attempt:"; \
		tail -n 40 build/cpp-configure.log; rm -rf build/cpp; \
		$(CMAKE_CONFIGURE) >build/cpp-configure.log 2>&1 || { cat build/cpp-configure.log; \
			cat build/cpp/CMakeFiles/CMakeError.log build/cpp/CMakeFiles/CMakeConfigureLog.yaml 2>/dev/null | tail -n 80; \
			exit 1; }; }
	cmake --build build/cpp -j2
	@echo "built build/cpp/torchship-run"

# benchmarks/peers.py's environment: torchship beside the runtimes people pick instead (all from PyPI; fastembed's
# model comes from the ONNX export the benchmark writes, not from a hub). Kept apart from .venv: nncf and
# openvino pin their own numpy and protobuf ranges.
PEERS_VENV ?= .venv-peers
peers-venv: $(PEERS_VENV)/.installed
$(PEERS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip --disable-pip-version-check -q install torch==2.13.0 -e '.[demo,onnx,bench]' \
		'sentence-transformers>=5' 'openvino>=2025.1' 'nncf>=2.16' 'ctranslate2>=4.5' 'fastembed>=0.6'
	touch $@

# Regenerates docs/bench (report.json, report.md, plots) that the README shows.
bench-report: $(VENV)/.test-installed
	$(VENV)/bin/torchship export demo artifacts/minilm-all --format all --overwrite
	$(VENV)/bin/torchship bench artifacts/minilm-all --texts data/texts.jsonl \
		--shapes 1x16,1x128,8x128 --compare eager,onnxruntime --threads 2 --output docs/bench

clean:
	rm -rf artifacts build *.egg-info .pytest_cache .mypy_cache .ruff_cache
