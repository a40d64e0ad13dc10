# ClusterLink (Python). The README names two commands: `make demo` and `make test`.
PY      := .venv/bin/python
PYTEST_ARGS ?=
BENCH_QUICK ?=
BENCH_ARGS ?=

.PHONY: install demo test soak image lint protos crds bench clean-leftovers

install:            ## set up everything (apt packages, kernel header links, .venv, BCC shim); idempotent
	bash scripts/install.sh

demo: install       ## two simulated peers, an export, an import, policies, a request through eBPF + mTLS
	$(PY) -m fabric.demo

test: install       ## all tests (unit, integration as root, conformance), import contracts, leftover check
	$(PY) -m pytest $(PYTEST_ARGS)
	.venv/bin/lint-imports --no-cache
	bash scripts/check-leftovers.sh

soak: install       ## the long hostile run (~30 min): 10-minute mixed soak, report in soak-report.json; 100 rounds of each hostile kind; fuzzing at 10,000 examples per property
	CLUSTERLINK_SOAK_SECONDS=600 CLUSTERLINK_SOAK_REPORT=$(CURDIR)/soak-report.json CLUSTERLINK_HOSTILE_ROUNDS=100 \
	CLUSTERLINK_FUZZ_EXAMPLES=10000 $(PY) -m pytest tests/integration/gateway/test_hostile.py tests/unit/security/test_fuzz_codecs.py
	bash scripts/check-leftovers.sh

IMAGE ?= ghcr.io/clusterlink-py/clusterlink
TAG   ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' charts/clusterlink/Chart.yaml)
image:              ## build the container image $(IMAGE):$(TAG) from Containerfile with buildah (needs its base image)
	@command -v buildah >/dev/null || { echo "make image needs buildah (apt-get install buildah)"; exit 1; }
	buildah build --layers -f Containerfile -t $(IMAGE):$(TAG) .

lint:
	.venv/bin/lint-imports --no-cache

protos: install     ## regenerate controlplane/api/*_pb2*.py from the .proto (a test checks for drift)
	$(PY) -m controlplane.api.generate

crds: install       ## regenerate charts/clusterlink/crds from the model (a test checks for drift)
	$(PY) -m controlplane.model.crdgen charts/clusterlink/crds

bench: install      ## benchmark on the simulated fabric (bench/README.md); BENCH_QUICK=1 for a short run, BENCH_ARGS for more flags
	$(PY) -m bench $(if $(BENCH_QUICK),--quick,) $(BENCH_ARGS)

clean-leftovers:    ## remove anything a crashed run left behind (cl* netns, links, cgroups, BPF attachments)
	$(PY) -m fabric.cleanup
