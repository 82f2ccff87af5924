# The two set-up commands: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test cpp bench-report clean

CMAKE_CONFIGURE = cmake -S cpp -B build/cpp -DCMAKE_BUILD_TYPE=Release \
	-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is pinned in pyproject.toml: its CPU build is on disk, any other version downloads gigabytes.
$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PIP) install -e '.[demo]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PIP) install -e '.[demo,test]'
	touch $@ $(VENV)/.demo-installed  # the test extra holds the demo one

demo: $(VENV)/.demo-installed
	$(VENV)/bin/torchship export demo artifacts/minilm --overwrite
	$(PY) examples/seed_demo.py artifacts/minilm

test: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -n 2 --dist loadgroup  # both cores; tests/conftest.py keeps each module (or family) on one worker

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

# Regenerates docs/bench (report.json, report.md, plots) that the README shows.
bench-report: $(VENV)/.test-installed
	$(VENV)/bin/torchship export demo artifacts/minilm-all --format all --overwrite
	$(VENV)/bin/torchship bench artifacts/minilm-all --texts data/texts.jsonl \
		--shapes 1x16,1x128,8x128 --compare eager,onnxruntime --threads 2 --output docs/bench

clean:
	rm -rf artifacts build *.egg-info .pytest_cache .mypy_cache .ruff_cache
