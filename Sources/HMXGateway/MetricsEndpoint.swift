// SPDX-License-Identifier: Apache-2.0
import HMXControl
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// A tiny HTTP endpoint: the Prometheus registry at `GET /metrics`, and the gateway's
/// health: `/healthz` (the process and its event loop answer), `/readyz` (200, or 503
/// with the reasons, one per line) and `/status` (JSON).
enum MetricsEndpoint {
    /// The gateway's health, asked for on its event loop.
    typealias HealthSource = @Sendable () -> EventLoopFuture<GatewayHealth>

    static func bind(
        _ endpoint: Endpoint,
        registry: PrometheusCollectorRegistry,
        health: @escaping HealthSource,
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
                    try channel.pipeline.syncOperations.addHandler(MetricsHandler(registry: registry, health: health))
                }
            }
        switch endpoint {
        case .tcp(let host, let port): return bootstrap.bind(host: host, port: port)
        case .unix(let path): return bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true)
        case .vsock(let cid, let port):
            return bootstrap.bind(to: VsockAddress(cid: .init(rawValue: cid), port: .init(rawValue: port)))
        case .tls, .udp, .unixDatagram, .seqpacket:
            // The configuration allows only plain byte-stream endpoints here.
            return group.next().makeFailedFuture(ChannelError.operationUnsupported)
        }
    }
}

final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let registry: PrometheusCollectorRegistry
    let health: MetricsEndpoint.HealthSource
    private var path = ""

    init(registry: PrometheusCollectorRegistry, health: @escaping MetricsEndpoint.HealthSource) {
        self.registry = registry
        self.health = health
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            self.path = String(head.uri.prefix { $0 != "?" })
        case .body:
            break
        case .end:
            switch self.path {
            case "/metrics":
                self.respond(context, .ok, "text/plain; version=0.0.4") { $0.writeBytes(self.registry.emitToBuffer()) }
            case "/healthz", "/readyz", "/status":
                let path = self.path
                self.health().assumeIsolated().whenComplete { result in
                    switch (path, result) {
                    case ("/healthz", .success):
                        self.respond(context, .ok, "text/plain") { $0.writeString("ok\n") }
                    case ("/readyz", .success(let health)):
                        let reasons = health.notReadyReasons
                        self.respond(context, reasons.isEmpty ? .ok : .serviceUnavailable, "text/plain") {
                            $0.writeString(reasons.isEmpty ? "ready\n" : reasons.map { "\($0)\n" }.joined())
                        }
                    case (_, .success(let health)):
                        self.respond(context, .ok, "application/json") { $0.writeString(health.json + "\n") }
                    case (_, .failure(let error)):
                        self.respond(context, .serviceUnavailable, "text/plain") { $0.writeString("\(error)\n") }
                    }
                }
            default:
                self.respond(context, .notFound, "text/plain") {
                    $0.writeString("not found: try /metrics, /healthz, /readyz or /status\n")
                }
            }
        }
    }

    private func respond(
        _ context: ChannelHandlerContext,
        _ status: HTTPResponseStatus,
        _ contentType: String,
        _ write: (inout ByteBuffer) -> Void
    ) {
        var body = context.channel.allocator.buffer(capacity: 4096)
        write(&body)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.readableBytes)")
        headers.add(name: "Connection", value: "close")
        let head = HTTPResponseHead(version: .http1_1, status: status, headers: headers)
        context.write(Self.wrapOutboundOut(.head(head)), promise: nil)
        context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}

@available(*, unavailable)
extension MetricsHandler: Sendable {}
