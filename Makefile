# The project's vocabulary. `make demo` and `make test` work on a fresh clone:
# each creates the virtualenv and installs what it needs by itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DOCPIPE := $(BIN)/docpipe

.DEFAULT_GOAL := help
.PHONY: help venv demo test unit integration lint fmt scenarios load load-test bench workers stop-workers flower clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install docpipe with its dev tools

demo: $(STAMP)  ## run the pipeline on the sample documents (embedded default: no Redis, no cloud)
	$(DOCPIPE) run samples/

# Tests run in a random order (pytest-randomly) so that order-dependent tests fail
# here, not on someone's fresh clone; the seed is printed, `make test SEED=N` repeats it.
ifeq ($(origin SEED), undefined)
SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
RANDOM_ORDER := -p randomly --randomly-seed=$(SEED)
define pytest_in_random_order
	@echo "test order: random, --randomly-seed=$(SEED) (repeat it: make $@ SEED=$(SEED))"
	@$(BIN)/pytest -q $(1) $(RANDOM_ORDER) \
	  || { echo "failed with --randomly-seed=$(SEED) (repeat it: make $@ SEED=$(SEED))"; exit 1; }
endef

test: lint $(STAMP)  ## lint, then unit, integration and the short load check (CI runs this)
	$(call pytest_in_random_order,tests -m 'load or not load')

unit: $(STAMP)  ## unit tests only (no services needed)
	$(call pytest_in_random_order,tests/unit)

integration: $(STAMP)  ## integration tests (private redis-server, throw-away PostgreSQL database)
	$(call pytest_in_random_order,tests/integration -m integration)

lint: $(STAMP)  ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check pipeline fakes tests
	$(BIN)/ruff format --check pipeline fakes tests
	$(BIN)/mypy

fmt: $(STAMP)  ## format and auto-fix
	$(BIN)/ruff format pipeline fakes tests
	$(BIN)/ruff check --fix pipeline fakes tests

scenarios: $(STAMP)  ## run every scenario in scenarios/ (eager; MODE=both adds real workers) and print a summary table
	$(DOCPIPE) scenario run scenarios/*.yaml --mode $(or $(MODE),eager)

# The plan's worker layout, against DOCPIPE_BROKER_URL (see README "Broker mode").
RUN := .docpipe/run
WORKER_LAYOUT := ocr:prefork:2 text:threads:4 entity:gevent:100 graph:threads:4

# `make workers` succeeds only once every worker answers on the broker for its queue
# (WORKERS_TIMEOUT seconds at most); a worker that died or never answered fails it,
# naming its log and the log's last line.
WORKERS_TIMEOUT ?= 60

workers: $(STAMP)  ## start the plan's workers in the background and wait until each answers (pids and logs in .docpipe/run)
	@mkdir -p $(RUN)
	@for spec in $(WORKER_LAYOUT); do \
	  queue=$${spec%%:*}; rest=$${spec#*:}; pool=$${rest%%:*}; conc=$${rest#*:}; \
	  if [ -f $(RUN)/$$queue.pid ] && kill -0 $$(cat $(RUN)/$$queue.pid) 2>/dev/null; then \
	    echo "worker $$queue already running (pid $$(cat $(RUN)/$$queue.pid))"; continue; fi; \
	  nohup $(DOCPIPE) worker --queues $$queue --pool $$pool --concurrency $$conc \
	    --hostname $$queue@%h > $(RUN)/$$queue.log 2>&1 & echo $$! > $(RUN)/$$queue.pid; \
	  echo "starting worker $$queue ($$pool x$$conc), pid $$(cat $(RUN)/$$queue.pid), log $(RUN)/$$queue.log"; \
	done
	@$(DOCPIPE) wait-workers --run-dir $(RUN) --timeout $(WORKERS_TIMEOUT) \
	  $(foreach spec,$(WORKER_LAYOUT),$(firstword $(subst :, ,$(spec))))

stop-workers:  ## stop exactly the workers `make workers` started (warm shutdown, then kill)
	@for pidfile in $(RUN)/*.pid; do \
	  [ -f "$$pidfile" ] || continue; pid=$$(cat $$pidfile); \
	  if kill -TERM $$pid 2>/dev/null; then \
	    for i in $$(seq 1 60); do kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; \
	    kill -0 $$pid 2>/dev/null && kill -KILL $$pid; \
	    echo "stopped $$(basename $$pidfile .pid) (pid $$pid)"; fi; \
	  rm -f $$pidfile; \
	done

flower: $(STAMP)  ## Flower on 127.0.0.1:5555; needs DOCPIPE_FLOWER_BASIC_AUTH=user:strong-password
	$(DOCPIPE) flower

load: $(STAMP)  ## sequential baseline vs Celery under locust (USERS, DURATION); writes report/
	$(DOCPIPE) load --users $(or $(USERS),24) --duration $(or $(DURATION),30) --report report

load-test: $(STAMP)  ## the short CI version: fails if Celery is under 3x the sequential run (~1 min)
	$(BIN)/pytest -q tests/load -m load

bench: $(STAMP)  ## pytest-benchmark for the CPU-bound stages
	$(BIN)/pytest -q tests/unit -k bench --benchmark-enable --benchmark-only

clean:  ## remove the virtualenv and local state
	rm -rf $(VENV) .docpipe .pytest_cache .mypy_cache .ruff_cache
