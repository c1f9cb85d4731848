// SPDX-License-Identifier: Apache-2.0
import HMXProxyProtocol
import HMXStream
import Logging
import NIOCore

// tls:// listeners and targets, PROXY headers accepted from trusted sources, and who
// a caller from another host is (docs/CROSS-HOST.md).
extension Gateway {
    struct NoTLS: Error, CustomStringConvertible {
        var description: String { "this gateway was started without TLS support; tls:// mappings cannot run" }
    }

    /// The handlers an import's accepted socket gets before the stream glue: the TLS
    /// server and its gate (tls://), the PROXY header reader (`proxy_protocol: accept`).
    func addFrontHandlers(to channel: any Channel, for importConfig: GatewayConfig.Import) throws {
        guard importConfig.tls != nil || importConfig.trustedProxies != nil else { return }
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        // Clients still in their handshake (or PROXY header) count against the
        // import's max_connections: a flood of them cannot hold more than that.
        let open = self.countsByMapping["import:\(importConfig.name)", default: 0]
        let pending = self.frontPending[importConfig.name, default: 0]
        guard !self.isShuttingDown, open + pending < importConfig.maxConnections else {
            let outcome: ConnectionOutcome = self.isShuttingDown ? .shuttingDown : .limitReached
            self.countRefusal(outcome, on: importConfig)
            self.limited(.refusedOpen, from: importConfig.peer) { suppressed in
                self.logger.warning(
                    "connection refused",
                    metadata: [
                        "mapping": "\(importConfig.name)", "reason": "\(outcome.rawValue)",
                        "client": "\(channel.remoteAddress?.description ?? "-")", "suppressed": "\(suppressed)",
                    ]
                )
                self.auditRefusal(outcome, on: importConfig)
            }
            throw ChannelError.ioOnClosedChannel
        }
        self.frontPending[importConfig.name, default: 0] += 1
        self.frontPendingChannels.insert(ObjectIdentifier(channel))
        channel.closeFuture.assumeIsolated().whenComplete { _ in bound.value.frontDone(channel, for: importConfig) }
        var timeout = TimeAmount.milliseconds(TLSServerSettings.defaultHandshakeTimeoutMilliseconds)
        if let settings = importConfig.tls {
            guard let tls = self.tls else { throw NoTLS() }
            timeout = .milliseconds(settings.handshakeTimeoutMilliseconds)
            let gate = TLSGateHandler(tls: tls, timeout: timeout)
            try tls.addServerHandler(for: importConfig.name, to: channel, gate: gate)
            try channel.pipeline.syncOperations.addHandler(gate)
            gate.handshake.assumeIsolated().whenFailure { error in
                let failure = error as? TLSHandshakeError ?? TLSHandshakeError(.handshakeFailed, "\(error)")
                bound.value.refusedBeforeOpen(
                    importConfig,
                    failure.failure.outcome,
                    message: "TLS handshake failed",
                    detail: failure.detail,
                    client: channel.remoteAddress
                )
            }
        }
        if let trusted = importConfig.trustedProxies {
            let reader = ProxyHeaderReader(trusted: trusted, timeout: timeout) { channel, refused in
                bound.value.proxyHeaderRefused(channel, refused, on: importConfig)
            }
            try channel.pipeline.syncOperations.addHandler(reader)
        }
    }

    /// A client is through its handshake and header (or gone): it counts as a
    /// connection from now on, or not at all.
    func frontDone(_ channel: any Channel, for importConfig: GatewayConfig.Import) {
        guard self.frontPendingChannels.remove(ObjectIdentifier(channel)) != nil else { return }
        self.frontPending[importConfig.name, default: 1] -= 1
    }

    /// The TLS client (and its gate) in front of an export's socket to a tls:// target.
    func addTLSClient(to channel: any Channel, for export: GatewayConfig.Export) throws {
        guard case .tls(let host, _) = export.target else { return }
        guard let tls = self.tls else { throw NoTLS() }
        let name = export.tls?.serverName ?? host
        let checked = export.tls?.verifyHostname != false && IPNetwork(name) == nil
        let gate = TLSGateHandler(
            tls: tls,
            timeout: .milliseconds(export.connectTimeoutMilliseconds),
            expectedName: checked ? name : nil
        )
        try tls.addClientHandler(for: export.name, host: host, to: channel, gate: gate)
        try channel.pipeline.syncOperations.addHandler(gate)
    }

    /// Who the client of an accepted socket is beyond this host: the gateway that
    /// vouched for it with a PROXY header (trusted by certificate or address) and the
    /// domain it asserts, or the client's own verified certificate; nil for a plain
    /// client.
    func caller(of channel: any Channel) -> CallerIdentity? {
        let identity = (try? channel.pipeline.syncOperations.handler(type: TLSGateHandler.self))?.identity
        let reader = try? channel.pipeline.syncOperations.handler(type: ProxyHeaderReader.self)
        if let reader, let header = reader.header, let trustedBy = reader.trustedBy {
            // A proxy trusted by its address that terminated TLS itself (HAProxy with
            // send-proxy-v2-ssl-cn) vouches with the client certificate it verified.
            if identity == nil, let name = header.verifiedClientCommonName {
                return CallerIdentity(
                    assertedBy: name,
                    domain: header.hmxDomainName ?? header.hmxDomainID.map { "\($0)" },
                    certificateName: name,
                    tlsVersion: nil
                )
            }
            return CallerIdentity(
                assertedBy: trustedBy,
                domain: header.hmxDomainName ?? header.hmxDomainID.map { "\($0)" },
                certificateName: identity?.commonName,
                tlsVersion: identity?.version
            )
        }
        guard let identity, let name = identity.commonName ?? identity.dnsNames.first else { return nil }
        return CallerIdentity(
            assertedBy: name,
            domain: nil,
            certificateName: identity.commonName,
            tlsVersion: identity.version
        )
    }

    /// A client of an import was turned away before its connection opened (its TLS
    /// handshake failed, its PROXY header was refused): counted, logged, audited.
    func refusedBeforeOpen(
        _ importConfig: GatewayConfig.Import,
        _ outcome: ConnectionOutcome,
        message: Logger.Message,
        detail: String,
        client: SocketAddress?
    ) {
        self.countRefusal(outcome, on: importConfig)
        let clientText = client?.description ?? "-"
        // Any client can cause these: at most so many lines per interval.
        self.limited(.refusedOpen, from: importConfig.peer) { suppressed in
            var metadata: Logger.Metadata = [
                "mapping": "\(importConfig.name)", "reason": "\(outcome.rawValue)", "client": "\(clientText)",
                "error": "\(detail)",
            ]
            if suppressed > 0 { metadata["suppressed"] = "\(suppressed)" }
            self.logger.warning(message, metadata: metadata)
            self.auditRefusal(outcome, on: importConfig, reason: detail)
        }
    }

    /// `proxy_protocol: accept` refused a client: before its connection opened (a
    /// trusted source without a valid header), or after (an untrusted one sent a
    /// header: its connection is reset, and its end counts as the refusal).
    func proxyHeaderRefused(
        _ channel: any Channel,
        _ refused: ProxyHeaderReader.Refused,
        on importConfig: GatewayConfig.Import
    ) {
        let glue = try? channel.pipeline.syncOperations.handler(type: StreamGlueHandler.self)
        if let id = glue?.id, self.connections[id] != nil {
            self.connections[id]?.localOutcome = .proxyHeaderRefused
            self.connections[id]?.logger.warning(
                "PROXY header refused",
                metadata: ["reason": "\(ConnectionOutcome.proxyHeaderRefused.rawValue)", "error": "\(refused)"]
            )
            return
        }
        self.refusedBeforeOpen(
            importConfig,
            .proxyHeaderRefused,
            message: "PROXY header refused",
            detail: refused.description,
            client: channel.remoteAddress
        )
    }
}
