# syntax=docker/dockerfile:1
# tollgate's container image: the tollgate binary on a minimal glibc runtime (distroless cc:
# glibc, libgcc, CA certificates, no shell), running as a non-root user, `tollgate` as entrypoint.
# Both Lambda-style architectures of Fargate: linux/arm64 (Graviton, the Terraform default) and
# linux/amd64, cross-compiled on the build machine's own architecture (no emulation):
#
#   docker buildx build --platform linux/arm64,linux/amd64 -t <account>.dkr.ecr.<region>.amazonaws.com/tollgate:<tag> --push .
#
# BINARY=prebuilt takes the binary from the build context's dist/linux-<arch>/tollgate instead of
# compiling it, and RUNTIME_IMAGE can name a locally built base: dev/image-build does both to
# build this same file with buildah where no container registry is reachable.

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY=source

FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS build-source
ARG TARGETARCH
ARG BUILDARCH
# A cross C compiler for aws-lc (jsonwebtoken, rustls) when the target is not the build machine.
RUN if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
      case "$TARGETARCH" in \
        arm64) pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
        amd64) pkgs="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      esac; \
      apt-get update && apt-get install -y --no-install-recommends $pkgs && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=tollgate-target-${TARGETARCH} \
    dev/cross-build "$TARGETARCH" /out && mkdir -p /out/spool

FROM scratch AS build-prebuilt
ARG TARGETARCH
COPY dist/linux-${TARGETARCH}/tollgate /out/tollgate
COPY dist/spool/ /out/spool/

FROM build-${BINARY} AS binary

FROM ${RUNTIME_IMAGE}
COPY --from=binary /out/tollgate /usr/local/bin/tollgate
# The spool's directory (Terraform mounts a task volume here), writable by the runtime user.
COPY --from=binary --chown=65532:65532 /out/spool/ /var/lib/tollgate/
USER 65532:65532
VOLUME ["/var/lib/tollgate"]
# ext_proc gRPC, and /healthz /readyz /metrics (both on 127.0.0.1 unless configured otherwise).
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve"]
