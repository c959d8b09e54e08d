# weft — see README.md.  Everything here runs as root on Debian 12.
# Debian's interpreter when there is one: it starts ~1 ms faster than a self-built
# one (PGO, static libpython), and every CNI call pays interpreter start-up
PYTHON      ?= $(firstword $(wildcard /usr/bin/python3) python3)
DEV_VENV    := .venv
VENV        ?= /opt/weft/venv
CNI_BIN_DIR ?= /opt/cni/bin
BIN_DIR     ?= /usr/local/bin
PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: deps venv install cnitool stubs test unit demo bench soak clean

deps:
	scripts/deps.sh
	scripts/fetch-runtimes.sh
	$(MAKE) venv cnitool

# the development/test venv (editable install of this checkout)
venv: $(DEV_VENV)/.installed
$(DEV_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install -q --upgrade pip
	$(DEV_VENV)/bin/pip install -q -e '.[test]'
	touch $@

# weft, weft-ipam -> CNI_BIN_DIR; weftd, weftctl -> BIN_DIR; code in VENV.  Idempotent.
install:
	scripts/install.sh "$(VENV)" "$(CNI_BIN_DIR)" "$(BIN_DIR)" "$(PYTHON)"

# weft's own libcni driver with cnitool's command line (tools/cnitool), built offline
# from Debian's golang-go and libcni source (golang-github-appc-cni-dev)
CNITOOL := build/cnitool
cnitool: $(CNITOOL)
$(CNITOOL): tools/cnitool/main.go
	@command -v go >/dev/null || { echo "cnitool: no go compiler; run make deps (golang-go, golang-github-appc-cni-dev)" >&2; exit 1; }
	cd tools/cnitool && GO111MODULE=off GOPATH=/usr/share/gocode \
	  GOCACHE=$(CURDIR)/build/go-cache go build -o $(CURDIR)/$@ .

# the etcd gRPC stubs, generated from cni_plugin/subnet/etcd_api/etcd.proto with the
# test extra's grpcio-tools; committed, so installing weft needs no protoc
# (tests/unit/test_etcd_stubs.py fails while they differ from what the .proto gives)
stubs: venv
	$(DEV_VENV)/bin/python scripts/etcd_stubs.py

test: deps
	scripts/with-docker-engine.sh $(DEV_VENV)/bin/python -m pytest $(PYTEST_ARGS)

unit: venv
	$(DEV_VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

# DEMO_FAMILY=ipv6: the demo on an IPv6-only network (docs/configuration.md)
DEMO_FAMILY ?= ipv4
demo: deps
	$(DEV_VENV)/bin/python -m demo.cluster --family $(DEMO_FAMILY)

# weft vs the reference Go plugins (docs/performance.md); JSON in bench-results/
bench: deps
	$(DEV_VENV)/bin/python -m bench.run $(BENCH_ARGS)

# the fault-injection soak of the per-pod path, longer than the suite's (docs/operations.md "Behaviour")
SOAK_SECONDS ?= 600
SOAK_OPS     ?= 20000
soak: deps
	WEFT_SOAK_SECONDS=$(SOAK_SECONDS) WEFT_SOAK_OPS=$(SOAK_OPS) \
	  $(DEV_VENV)/bin/python -m pytest tests/cluster/test_soak.py -s $(PYTEST_ARGS)

clean:
	rm -rf $(DEV_VENV) build *.egg-info
