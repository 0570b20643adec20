# Two entry points (see README): `make demo` sets everything up and opens napari on a bundled
# sample; `make test` runs the whole suite headless. Both create/refresh the virtualenv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.medenhance-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Qt under a virtual X server needs these on a bare Debian/Ubuntu machine.
APT_PKGS := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 \
            libxcb-shape0 libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 \
            libfontconfig1 libdbus-1-3
SCREENSHOT ?= out/demo.png

.PHONY: setup system-deps demo test clean

setup: system-deps $(STAMP)

# Only when there is no display and no Xvfb yet, and only with apt available.
system-deps:
	@if [ -z "$$DISPLAY" ] && ! command -v Xvfb >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Xvfb and Qt's X libraries (no display found)"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	  else echo "No display and no Xvfb: install an X server (xvfb) to run napari headless." >&2; exit 1; fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@# Pin torch before anything can pull the newest CUDA build: only when no torch is installed.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[testing]"
	@touch $(STAMP)

demo: setup
	@if [ -n "$$DISPLAY" ]; then $(PY) -m napari_medenhance demo; \
	else xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m napari_medenhance demo --screenshot $(SCREENSHOT); fi

# pytest-xvfb starts a virtual X server for the GUI tests when there is no display.
test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache out
