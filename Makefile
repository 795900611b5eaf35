# The two commands of the README:
#   make demo   install into .venv, run the whole DAG on the synthetic demo cohort, write the report
#   make test   install into .venv (if needed) and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
CORES ?= all

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
	$(BIN)/python -m pytest tests

lint: install
	snakemake --lint

dag: install
	snakemake --dag | dot -Tsvg > results/dag.svg

clean-results:
	rm -rf results logs .snakemake/incomplete
