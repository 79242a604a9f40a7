# syntax=docker/dockerfile:1
# kensa images. Two targets:
#   docker build -t kensa:gpu .              # default: NVIDIA CUDA 12 + cuDNN 9 runtime, onnxruntime-gpu
#   docker build -t kensa:cpu --target cpu . # slim Debian, onnxruntime (CPU)
# Both run as a non-root user, bake in the demo model (/opt/kensa/models/demo), keep state in
# the /data volume and read a mounted model repository from /models when KENSA_MODEL_REPOSITORY
# points there. Pass --build-arg KENSA_GIT_COMMIT=$(git rev-parse --short=12 HEAD) so
# kensa_build_info names the commit.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG SLIM_IMAGE=debian:bookworm-slim
ARG ORT_VERSION=1.31.1

# The release binary.
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
ARG KENSA_GIT_COMMIT=unknown
ENV KENSA_GIT_COMMIT=${KENSA_GIT_COMMIT}
RUN cargo build --release --locked --bin kensa

# ONNX Runtime's shared libraries, taken from the PyPI wheels as scripts/setup-ort.sh does.
FROM python:3.11-slim AS onnxruntime
ARG ORT_VERSION
COPY scripts/setup-ort.sh /src/scripts/setup-ort.sh
WORKDIR /src
RUN ORT_DEST=ort-cpu scripts/setup-ort.sh \
 && ORT_DEST=ort-gpu scripts/setup-ort.sh --gpu

# CPU image.
FROM ${SLIM_IMAGE} AS cpu
ARG ORT_VERSION
# The base image's own curl and CA certificates, kept current by rebuilding (not pinned).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin kensa \
 && install -d -o kensa -g kensa /data /models
COPY --from=builder /src/target/release/kensa /usr/local/bin/kensa
COPY --from=onnxruntime /src/ort-cpu/lib/ /opt/onnxruntime/lib/
COPY models/demo /opt/kensa/models/demo
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    KENSA_MODEL_REPOSITORY=/opt/kensa/models/demo \
    KENSA_DATA_DIR=/data \
    KENSA_DEVICE=cpu \
    KENSA_LOG_FORMAT=json
VOLUME ["/data", "/models"]
USER 10001
WORKDIR /data
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["kensa"]
CMD ["serve"]

# GPU image (the default target).
FROM ${CUDA_IMAGE} AS gpu
ARG ORT_VERSION
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin kensa \
 && install -d -o kensa -g kensa /data /models
COPY --from=builder /src/target/release/kensa /usr/local/bin/kensa
COPY --from=onnxruntime /src/ort-gpu/lib/ /opt/onnxruntime/lib/
COPY models/demo /opt/kensa/models/demo
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    LD_LIBRARY_PATH=/opt/onnxruntime/lib:${LD_LIBRARY_PATH} \
    KENSA_MODEL_REPOSITORY=/opt/kensa/models/demo \
    KENSA_DATA_DIR=/data \
    KENSA_DEVICE=auto \
    KENSA_LOG_FORMAT=json
VOLUME ["/data", "/models"]
USER 10001
WORKDIR /data
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["kensa"]
CMD ["serve"]
