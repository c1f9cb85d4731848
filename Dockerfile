# SPDX-License-Identifier: Apache-2.0
# Multi-stage build of the release binaries; the runtime image holds only them.
# Release builds skip Swift's run-time exclusivity checks (all tests run with them, in
# debug builds); see docs/BENCHMARKS.md for what that buys.
#   docker build -t hmx-gateway .
#   docker run --rm -v /run/hmx:/run/hmx -v $PWD/Configs:/etc/hmx --network host hmx-gateway \
#       hmx-gateway run --config /etc/hmx/gateway.yaml
FROM swift:6.1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libxen-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Package manifest and the pinned versions first, so that dependency resolution is
# cached between builds; the image builds exactly the versions the tests ran with.
COPY Package.swift Package.resolved ./
RUN swift package resolve --force-resolved-versions
COPY Sources ./Sources
COPY Tests ./Tests
RUN for product in hmx-gateway hmx-emulator hmx-cat; do \
        swift build -c release -Xswiftc -enforce-exclusivity=unchecked --static-swift-stdlib --product "$product" || exit 1; \
    done \
 && mkdir -p /out \
 && bin="$(swift build -c release -Xswiftc -enforce-exclusivity=unchecked --show-bin-path)" \
 && cp "$bin/hmx-gateway" "$bin/hmx-emulator" "$bin/hmx-cat" /out/

FROM debian:bookworm-slim
# Xen's user-space libraries for the real Argo backend (link: {xen: true}); the
# system's CAs for tls:// targets with `ca: system` (TLS itself is BoringSSL, built in).
RUN apt-get update && apt-get install -y --no-install-recommends \
        libxencall1 libxenevtchn1 libxenforeignmemory1 libxenstore4 libxentoollog1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --no-create-home hmx && mkdir -p /run/hmx /etc/hmx
COPY --from=build /out/ /usr/local/bin/
COPY Configs/ /etc/hmx/
CMD ["hmx-gateway", "run", "--config", "/etc/hmx/gateway.yaml"]
