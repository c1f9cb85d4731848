# SPDX-License-Identifier: Apache-2.0
# Multi-stage build of the release binaries; the runtime image holds only them.
#   docker build -t hmx-gateway .
#   docker run --rm -v /run/hmx:/run/hmx -v $PWD/Configs:/etc/hmx hmx-gateway \
#       hmx-emulator run --config /etc/hmx/emulator.yaml
FROM swift:6.1-bookworm AS build
WORKDIR /src
# Package manifest first, so that dependency resolution is cached between builds.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --static-swift-stdlib --product hmx-emulator \
 && swift build -c release --static-swift-stdlib --product hmx-cat \
 && mkdir -p /out \
 && cp "$(swift build -c release --show-bin-path)/hmx-emulator" "$(swift build -c release --show-bin-path)/hmx-cat" /out/

FROM debian:bookworm-slim
RUN useradd --system --no-create-home hmx && mkdir -p /run/hmx /etc/hmx
COPY --from=build /out/ /usr/local/bin/
COPY Configs/ /etc/hmx/
CMD ["hmx-emulator", "run", "--config", "/etc/hmx/emulator.yaml"]
