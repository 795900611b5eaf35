# The two commands of the README:
#   make demo   install into .venv, run the whole DAG on the synthetic demo cohort, write the report
#   make test   install into .venv (if needed) and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
CORES ?= all
# test processes (pytest-xdist): each test file runs whole in one of them (the module fixtures' workflow runs);
# 2 keeps a 2-core CI machine busy while one process waits on a subprocess, SLURM or a PACS
TEST_WORKERS ?= 2

.PHONY: install demo report test lint dag clean-results

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	snakemake --cores $(CORES)
	snakemake --report results/report.html

report: install
	snakemake --report results/report.html

test: install
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile --durations=25

# the lint gate (also run by the test suite, tests/test_lint.py): ruff on the Python code, snakefmt on
# the rules, snakemake's own linter on the workflow
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakefmt --check --line-length 120 Snakefile workflow/rules
	snakemake --lint

# the job graph as results/dag.svg (needs graphviz's `dot`); on a fresh clone too (makes results/)
dag: install
	@command -v dot > /dev/null || { echo "make dag: graphviz's dot not found; install graphviz (apt-get install graphviz)" >&2; exit 1; }
	mkdir -p results
	snakemake --dag > results/dag.dot
	dot -Tsvg results/dag.dot > results/dag.svg.tmp && mv results/dag.svg.tmp results/dag.svg
	rm -f results/dag.dot

clean-results:
	rm -rf results logs .snakemake/incomplete

# Opt-in: make the cluster profiles findable by name (`snakemake --profile slurm` / `--profile hybrid`),
# as links from Snakemake's user profile directory to profiles/ of this checkout; another profile of
# that name is left alone (lungseg's then goes in as lungseg-slurm). `make install PROFILES=1` does it too.
# PROFILE_ARGS: further options of `lungseg profiles install` (e.g. --name-prefix lungseg-, --force).
.PHONY: install-profiles
install-profiles: $(VENV)/.installed
	$(BIN)/lungseg profiles install $(PROFILE_ARGS)
ifeq ($(PROFILES),1)
install: install-profiles
endif

# Documentation site (docs/, mkdocs.yml): `make docs` builds it into site/ with strict checking (a link
# to a missing page or anchor fails); `make docs-reference` regenerates the pages made from the code
# (docs/reference/cli.md, docs/reference/configuration.md, docs/benchmarks.md; tests/test_docs.py
# checks that the committed ones are current).
.PHONY: docs docs-reference
docs: install
	$(BIN)/python -m mkdocs build --strict --site-dir site

docs-reference: install
	$(BIN)/python -m lungseg.docs_reference
