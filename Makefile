# The two commands a new user needs, and the steps they rest on.
#   make run    featurize the sample images on the embedded engine (OUTPUT=out by default)
#   make test   build everything, install the S3 server the cluster tests use and the quantize
#               venv, run every test
SHARED ?= ../shared
INPUT  ?= $(SHARED)/data/fruits-360
MODEL  ?= $(SHARED)/models/mobilenetv2_features.onnx
OUTPUT ?= out
CARGO  ?= cargo

.PHONY: setup setup-s3 setup-quantize build run test bench bench-int8 bench-cluster bench-pca bench-incremental bench-scale docker emr-package

setup:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
	./scripts/setup-nasm.sh
	./scripts/setup-onnxruntime.sh

# Garage, the S3 server of the cluster tests and of a local cluster (built once, then cached).
setup-s3:
	./scripts/setup-garage.sh

# The Python of `fruits quantize` (onnxruntime's quantization tool, pinned, about 30 s once,
# then cached in ~/.cache/fruits/quantize-venv). `fruits run` never needs it.
setup-quantize:
	./scripts/setup-quantize.sh

build: setup
	$(CARGO) build --release --workspace --bins

run: build
	$(CARGO) run --release --quiet --bin fruits -- run --input "$(INPUT)" --output "$(OUTPUT)" --model "$(MODEL)"

# One build of every target: `--bins` alone resolves other dependency features than the tests,
# which would build DataFusion a second time.
test: setup setup-s3 setup-quantize
	$(CARGO) build --release --workspace --all-targets
	$(CARGO) test --release --workspace

bench: build setup-quantize
	$(CARGO) run --release --quiet --bin fruits -- bench --input "$(INPUT)" --model "$(MODEL)"

# The whole job with the fp32 model and with its int8 copy (`fruits quantize`), in one run.
bench-int8: build setup-quantize
	./scripts/bench-int8.sh "$(INPUT)" "$(MODEL)"

bench-cluster: build
	./scripts/bench-cluster.sh "$(INPUT)" "$(MODEL)"

bench-pca: build
	./scripts/bench-pca.sh "$(INPUT)" "$(MODEL)" 50000

bench-incremental: build
	./scripts/bench-incremental.sh "$(INPUT)" "$(MODEL)"

# fruits at 10^5 and 10^6 images with a model that costs nothing (see the script).
bench-scale: build
	./scripts/bench-scale.sh "$(INPUT)"

# Container images of the local Docker cluster (docker/), from the release binaries.
docker: build setup-s3
	./scripts/docker-build.sh

# The release tarball the EMR bootstrap action installs (README, "Deploy on AWS EMR").
emr-package: build
	./deploy/emr/package.sh dist
