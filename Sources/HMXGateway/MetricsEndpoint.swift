// SPDX-License-Identifier: Apache-2.0
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// A tiny HTTP endpoint serving the Prometheus registry at `GET /metrics`.
enum MetricsEndpoint {
    static func bind(
        _ endpoint: Endpoint,
        registry: PrometheusCollectorRegistry,
        group: any EventLoopGroup
    ) -> EventLoopFuture<any Channel> {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Out of descriptors, pause instead of spinning on a readable listener.
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler())
                }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHandler(registry: registry))
                }
            }
        switch endpoint {
        case .tcp(let host, let port): return bootstrap.bind(host: host, port: port)
        case .unix(let path): return bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true)
        case .vsock(let cid, let port):
            return bootstrap.bind(to: VsockAddress(cid: .init(rawValue: cid), port: .init(rawValue: port)))
        }
    }
}

final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let registry: PrometheusCollectorRegistry
    private var path = ""

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            self.path = head.uri
        case .body:
            break
        case .end:
            let found = self.path == "/metrics"
            var body = context.channel.allocator.buffer(capacity: 4096)
            if found {
                body.writeBytes(self.registry.emitToBuffer())
            } else {
                body.writeString("not found: try /metrics\n")
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4" : "text/plain")
            headers.add(name: "Content-Length", value: "\(body.readableBytes)")
            headers.add(name: "Connection", value: "close")
            let head = HTTPResponseHead(version: .http1_1, status: found ? .ok : .notFound, headers: headers)
            context.write(Self.wrapOutboundOut(.head(head)), promise: nil)
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            let channel = context.channel
            context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

@available(*, unavailable)
extension MetricsHandler: Sendable {}
