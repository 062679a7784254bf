# The two commands a newcomer needs: `make lab` and `make test`. Both set up .venv first if it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
JOBS   ?= 2
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

NB ?= 06_decoding

.PHONY: setup lab test grade release course bench present clean mutants

setup: $(STAMP)

# torch is pinned to 2.13.0 in pyproject.toml: a looser pin makes pip fetch a multi-GB CUDA build on Linux.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,book]"
	@touch $(STAMP)

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG)

# Every test: the project's own, the graded tests against the reference solutions, the notebooks, the grader.
# $(JOBS) test processes already fill the cores: one math thread each (kernels of notebooks inherit it) avoids
# oversubscription, which slows PyTorch down many times over.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) --impl solutions tests

# Mutation testing (about half an hour, so not part of `make test`): do the graded tests fail slightly wrong
# solutions? Report in build/mutants.txt: per exercise, mutants killed, known equivalent, surviving (as diffs).
mutants: setup
	OMP_NUM_THREADS=1 $(PY) tests/mutation/run.py --jobs $(JOBS) --report build/mutants.txt

grade: setup
	$(VENV)/bin/llmcourse grade

release: setup
	$(VENV)/bin/llmcourse release

clean:
	rm -rf build

# The course as a book: execute every notebook headless ($(JOBS) at a time), then build build/book/index.html (Sphinx,
# from build/book-source/). Fails when a notebook raises; each notebook's run time is in the log and on the front page.
course: setup
	$(PY) -m llmcourse.course.book --jobs $(JOBS)

# Measure inference speed against this machine's limits: a table, build/bench.json and PNG plots in build/.
bench: setup
	$(PY) -m llmcourse bench --json build/bench.json --plots build

# Classroom: one notebook full screen, outputs and live widgets only (Voila), e.g. `make present NB=02_self_attention`.
present: setup
	$(VENV)/bin/voila notebooks/$(NB).ipynb --Voila.ip=127.0.0.1
