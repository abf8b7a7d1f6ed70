# The two commands of the README: `make demo` and `make test`. Both set themselves up from nothing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: setup browser lint demo test test-fast clean bench

setup: $(STAMP)

# torch/torchvision: this machine's pip takes 2.14.1 / 0.29.1 from local disk; elsewhere pip resolves the ranges.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# The HTML report's screenshot test needs Debian's chromium; installed here when we are root with apt-get (CI,
# fresh machines). Elsewhere the test skips, except under CI=true, where it fails rather than pass unseen.
browser:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian chromium (report screenshot test)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: /usr/bin/chromium absent and not installable here: the screenshot test will skip"; fi; }

demo: setup
	$(VENV)/bin/landmark demo $(DEMO_ARGS)

# ruff (config in pyproject.toml): lint and format check, first and fast (about a second).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint browser
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test-fast: setup lint
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/landmark bench tag --images ../shared/data/real/porto-fullres --model out/demo/model

clean:
	rm -rf out .pytest_cache
