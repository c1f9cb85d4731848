// SPDX-License-Identifier: Apache-2.0
import CoreMetrics
import HMXControl
import HMXCore
import HMXStream
import Logging
import NIOCore
import NIOPosix

// MARK: - Imports: listeners

extension Gateway {
    func bind(_ importConfig: GatewayConfig.Import) -> EventLoopFuture<Void> {
        if importConfig.listen.isDatagram {
            return self.bindDatagram(importConfig).assumeIsolated().flatMapThrowing { channel in
                do {
                    try Self.setPermissions(of: importConfig)
                } catch {
                    channel.close(promise: nil)
                    throw error
                }
                self.listeners[importConfig.name] = (importConfig, channel)
                self.logger.info(
                    "import listening",
                    metadata: [
                        "mapping": "\(importConfig.name)", "listen": "\(importConfig.listen)",
                        "peer": "\(self.config.name(of: importConfig.peer))", "port": "\(importConfig.port)",
                    ]
                )
            }.nonisolated()
        }
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        let bootstrap = ServerBootstrap(group: self.eventLoop)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Out of descriptors, the listener pauses instead of spinning on a
                    // failing accept; clients wait in the backlog meanwhile.
                    let pause = AcceptPauseHandler { error in bound.value.acceptFailed(error, on: importConfig) }
                    try channel.pipeline.syncOperations.addHandler(pause)
                }
            }
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16384, maximum: 262144)
            )
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try bound.value.addFrontHandlers(to: channel, for: importConfig)
                    let handler = StreamGlueHandler(driver: bound.value.driver) { channel in
                        bound.value.accepted(channel, for: importConfig)
                    }
                    try channel.pipeline.syncOperations.addHandler(handler)
                    if case .seqpacket = importConfig.listen { try SeqpacketFramingHandler.configure(channel) }
                }
            }
        let future: EventLoopFuture<any Channel>
        let inherited = self.inheritedListeners.take(importConfig.name)
        switch importConfig.listen {
        case _ where inherited != nil:
            // Socket activation: the service manager's socket, already listening.
            future = bootstrap.withBoundSocket(inherited!)
        case .tcp(let host, let port), .tls(let host, let port): future = bootstrap.bind(host: host, port: port)
        case .unix(let path): future = bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true)
        case .vsock(let cid, let port):
            future = bootstrap.bind(to: VsockAddress(cid: .init(rawValue: cid), port: .init(rawValue: port)))
        case .seqpacket(let path):
            do {
                future = bootstrap.withBoundSocket(try SeqpacketFramingHandler.listen(path: path))
            } catch {
                future = self.eventLoop.makeFailedFuture(error)
            }
        case .udp, .unixDatagram:
            preconditionFailure("bound by bindDatagram")
        }
        return future.assumeIsolated().flatMapThrowing { channel in
            do {
                if inherited == nil { try Self.setPermissions(of: importConfig) }
            } catch {
                channel.close(promise: nil)
                throw error
            }
            self.listeners[importConfig.name] = (importConfig, channel)
            let listen = inherited.map { "socket \($0) from the service manager" } ?? "\(importConfig.listen)"
            self.logger.info(
                "import listening",
                metadata: [
                    "mapping": "\(importConfig.name)",
                    "listen": "\(listen)",
                    "peer": "\(self.config.name(of: importConfig.peer))", "port": "\(importConfig.port)",
                ]
            )
        }.nonisolated()
    }

    struct ListenerPermissionsFailed: Error, CustomStringConvertible {
        var description: String
    }

    /// Gives a Unix listener the configuration's `mode` and `group`.
    static func setPermissions(of importConfig: GatewayConfig.Import) throws {
        let path: String
        switch importConfig.listen {
        case .unix(let socket), .unixDatagram(let socket), .seqpacket(let socket): path = socket
        case .tcp, .tls, .udp, .vsock: return
        }
        let name = "import \(importConfig.name)"
        if let group = importConfig.group {
            guard let entry = getgrnam(group) else {
                throw ListenerPermissionsFailed(description: "\(name): group: no such group '\(group)'")
            }
            guard chown(path, uid_t.max, entry.pointee.gr_gid) == 0 else {
                let reason = String(cString: strerror(errno))
                let description = "\(name): cannot give \(path) to group \(group): \(reason)"
                throw ListenerPermissionsFailed(description: description)
            }
        }
        if let mode = importConfig.mode, chmod(path, mode_t(mode)) != 0 {
            let reason = String(cString: strerror(errno))
            let octal = String(mode, radix: 8)
            throw ListenerPermissionsFailed(description: "\(name): cannot set mode \(octal) on \(path): \(reason)")
        }
    }

    /// A client of an import turned away before its connection opened: counted.
    func countRefusal(_ outcome: ConnectionOutcome, on importConfig: GatewayConfig.Import) {
        self.metrics.count(outcome, imported: true)
        self.mappingCounters["import:\(importConfig.name)", default: .init()].outcomes[outcome, default: 0] += 1
    }

    /// ... and its audit record.
    func auditRefusal(_ outcome: ConnectionOutcome, on importConfig: GatewayConfig.Import, reason: String? = nil) {
        self.audit?.write(
            AuditLog.Record(
                event: "refused",
                mapping: importConfig.name,
                direction: "import",
                peer: importConfig.peer,
                peerName: self.config.peerName(of: importConfig.peer) ?? "",
                servicePort: importConfig.port,
                outcome: outcome.rawValue,
                reason: reason
            )
        )
    }

    /// Accepting on an import's listener failed: pause it for a moment; say so once
    /// in a while (each pause is counted).
    func acceptFailed(_ error: IOError, on importConfig: GatewayConfig.Import) {
        self.metrics.acceptPauses.increment()
        let now = self.driver.now
        if now - self.lastAcceptWarning >= WarningLimiter.interval {
            self.lastAcceptWarning = now
            let exhausted = error.errnoCode == EMFILE || error.errnoCode == ENFILE
            self.logger.warning(
                exhausted
                    ? "cannot accept clients: out of file descriptors; pausing the listener 100 ms at a time (raise the limit, e.g. LimitNOFILE)"
                    : "cannot accept clients; pausing the listener 100 ms at a time",
                metadata: ["mapping": "\(importConfig.name)", "error": "\(error)"]
            )
        }
    }

    /// A local client connected to an import's listener: open a connection to the
    /// peer's export, unless the gateway is shutting down or the import is full.
    func accepted(_ channel: any Channel, for importConfig: GatewayConfig.Import) -> ConnectionID? {
        let mapping = "import:\(importConfig.name)"
        self.frontDone(channel, for: importConfig)
        guard !self.isShuttingDown, self.countsByMapping[mapping, default: 0] < importConfig.maxConnections else {
            let outcome: ConnectionOutcome = self.isShuttingDown ? .shuttingDown : .limitReached
            self.logger.warning(
                "connection refused",
                metadata: [
                    "mapping": "\(importConfig.name)", "peer": "\(self.config.name(of: importConfig.peer))",
                    "reason": "\(outcome.rawValue)",
                ]
            )
            self.countRefusal(outcome, on: importConfig)
            self.auditRefusal(outcome, on: importConfig)
            channel.close(promise: nil)
            return nil
        }
        let caller = self.caller(of: channel)
        var callerBlock: ByteBuffer?
        if let caller {
            var block = channel.allocator.buffer(capacity: 64)
            caller.encode(into: &block)
            callerBlock = block
        }
        let id = self.driver.open(
            to: importConfig.peer,
            servicePort: importConfig.port,
            records: importConfig.listen.isRecords,
            caller: callerBlock,
            idleTimeout: importConfig.idleTimeoutMilliseconds > 0
                ? .milliseconds(importConfig.idleTimeoutMilliseconds) : nil,
            openTimeout: .milliseconds(importConfig.openTimeoutMilliseconds)
        )
        let handler = try? channel.pipeline.syncOperations.handler(type: StreamGlueHandler.self)
        if let handler { self.driver.attach(handler, to: id) }
        var logger = self.connectionLogger(id, mapping: importConfig.name)
        if let caller { logger[metadataKey: "caller"] = "\(caller)" }
        self.add(
            id,
            Connection(
                mapping: mapping,
                logger: logger,
                handler: handler,
                servicePort: importConfig.port,
                start: self.driver.now
            )
        )
        logger.debug("connection opening")
        return id
    }
}

// MARK: - Exports: admission and dialling

extension Gateway {
    /// OPEN from a peer: check the export, its allow-list (by the domain the
    /// hypervisor stamped on the message, never payload) and its limits, then dial.
    func admit(_ id: ConnectionID, servicePort: UInt32) -> StreamDriver.Admission {
        self.admit(id, servicePort: servicePort, records: false)
    }

    func admit(_ id: ConnectionID, servicePort: UInt32, records: Bool) -> StreamDriver.Admission {
        self.admit(id, servicePort: servicePort, records: records, caller: nil)
    }

    func admit(
        _ id: ConnectionID,
        servicePort: UInt32,
        records: Bool,
        caller block: ByteBuffer?
    ) -> StreamDriver.Admission {
        // A caller block is read only from a domain some export trusts to relay; the
        // admission believes it only for an export that names the domain in relays.
        var caller: CallerIdentity?
        if let block, self.config.exports.contains(where: { $0.relays.contains(id.peer) }) {
            do {
                caller = try CallerIdentity.decode(block)
            } catch {
                self.limited(.violation, from: id.peer) { suppressed in
                    self.connectionLogger(id, mapping: "-").warning(
                        "malformed caller in an OPEN from a relay; refusing it",
                        metadata: ["error": "\(error)", "suppressed": "\(suppressed)"]
                    )
                }
                return .refuse(.protocolError)
            }
        }
        let decision = self.config.admission(of: id.peer, to: servicePort, records: records, caller: caller) {
            mapping,
            peer in
            (
                self.countsByMapping[mapping, default: 0],
                self.countsByPeer[PeerMapping(mapping: mapping, peer: peer), default: 0]
            )
        }
        let export: GatewayConfig.Export
        switch decision {
        case .admitted(let admitted): export = admitted
        case .refused(let reason, let exportName):
            if let exportName {
                self.mappingCounters["export:\(exportName)", default: .init()].outcomes[
                    ConnectionOutcome(refused: reason),
                    default: 0
                ] += 1
            } else {
                self.unmappedRefusals[ConnectionOutcome(refused: reason), default: 0] += 1
            }
            // Logged here, where the export is known (the connection has no entry).
            // Audited as often as logged: a peer that floods OPENs cannot fill the
            // audit file either (what is left out is counted, and said once).
            self.limited(.refusedOpen, from: id.peer) { suppressed in
                var logger = self.connectionLogger(id, mapping: exportName ?? "-")
                if suppressed > 0 { logger[metadataKey: "suppressed"] = "\(suppressed)" }
                logger.warning(
                    "connection refused",
                    metadata: ["reason": "\(reason)", "caller": "\(caller.map { "\($0)" } ?? "-")"]
                )
                self.audit?.write(
                    AuditLog.Record(
                        event: "refused",
                        mapping: exportName ?? "-",
                        direction: "export",
                        peer: id.peer,
                        peerName: self.config.peerName(of: id.peer) ?? "",
                        servicePort: servicePort,
                        outcome: ConnectionOutcome(refused: reason).rawValue,
                        reason: "\(reason)" + (suppressed > 0 ? " (\(suppressed) similar left out)" : "")
                    )
                )
            }
            return .refuse(reason)
        }
        let mapping = "export:\(export.name)"
        let believed = export.relays.contains(id.peer) ? caller : nil
        var logger = self.connectionLogger(id, mapping: export.name)
        if let believed { logger[metadataKey: "caller"] = "\(believed)" }
        self.add(
            id,
            Connection(
                mapping: mapping,
                logger: logger,
                handler: nil,
                servicePort: servicePort,
                start: self.driver.now,
                caller: believed
            )
        )
        self.dial(export, for: id)
        return .dial(
            idleTimeout: export.idleTimeoutMilliseconds > 0 ? .milliseconds(export.idleTimeoutMilliseconds) : nil
        )
    }

    /// Linux's IP_BIND_ADDRESS_NO_PORT (include/uapi/linux/in.h).
    static let ipBindAddressNoPort: CInt = 24

    private func dial(_ export: GatewayConfig.Export, for id: ConnectionID) {
        let driver = NIOLoopBound(self.driver, eventLoop: self.eventLoop)
        let gateway = NIOLoopBound(self, eventLoop: self.eventLoop)
        var bootstrap = ClientBootstrap(group: self.eventLoop)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.maxMessagesPerRead, value: 1)
            .channelOption(
                .recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16384, maximum: 262144)
            )
            .connectTimeout(.milliseconds(export.connectTimeoutMilliseconds))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try gateway.value.addTLSClient(to: channel, for: export)
                    try channel.pipeline.syncOperations.addHandler(StreamGlueHandler(driver: driver.value))
                    if case .seqpacket = export.target { try SeqpacketFramingHandler.configure(channel) }
                }
            }
        if let prefix = export.sourceAddress {
            // From the source domain's own address; the port is chosen at connect, so
            // that many connections from one address to different targets do not run
            // out of ports (IP_BIND_ADDRESS_NO_PORT).
            do {
                bootstrap = bootstrap.bind(to: try prefix.socketAddress(for: id.peer))
                    .channelOption(
                        ChannelOptions.Types.SocketOption(
                            level: NIOBSDSocket.OptionLevel(rawValue: CInt(IPPROTO_IP)),
                            name: NIOBSDSocket.Option(rawValue: Self.ipBindAddressNoPort)
                        ),
                        value: 1
                    )
            } catch {
                self.connections[id]?.dialError = "source address \(prefix.text(for: id.peer)): \(error)"
                self.driver.refuse(id, .targetRefused)
                return
            }
        }
        let future: EventLoopFuture<any Channel>
        switch export.target {
        case .tcp(let host, let port), .tls(let host, let port): future = bootstrap.connect(host: host, port: port)
        case .unix(let path): future = bootstrap.connect(unixDomainSocketPath: path)
        case .vsock(let cid, let port):
            future = bootstrap.connect(to: VsockAddress(cid: .init(rawValue: cid), port: .init(rawValue: port)))
        case .seqpacket(let path):
            do {
                future = bootstrap.withConnectedSocket(try SeqpacketFramingHandler.connect(path: path))
            } catch {
                future = self.eventLoop.makeFailedFuture(error)
            }
        case .udp, .unixDatagram:
            // Admission gives an OPEN only stream exports.
            preconditionFailure("a datagram target is not dialled")
        }
        // A TLS target is connected once its handshake is done.
        let connected = future.assumeIsolated().flatMap { channel -> EventLoopFuture<any Channel> in
            guard let gate = try? channel.pipeline.syncOperations.handler(type: TLSGateHandler.self) else {
                return channel.eventLoop.makeSucceededFuture(channel)
            }
            return gate.handshake.map { _ in channel }.flatMapErrorThrowing { error in
                channel.close(promise: nil)
                throw error
            }
        }
        connected.whenComplete { result in
            switch result {
            case .success(let channel):
                guard self.connections[id] != nil, self.driver.connection(id)?.phase == .dialing,
                    let handler = try? channel.pipeline.syncOperations.handler(type: StreamGlueHandler.self)
                else {
                    // The peer reset the connection while we were dialling.
                    channel.close(promise: nil)
                    return
                }
                handler.attach(id)
                self.connections[id]?.handler = handler
                self.driver.attach(handler, to: id)
                if export.proxyProtocol == .v2 {
                    let name = self.config.peers.first { $0.value == id.peer }?.key
                    // Flushed at once: a server that speaks first (SSH, SMTP, a TLS
                    // listener waiting for the header) must not wait for the client.
                    channel.writeAndFlush(
                        ProxyHeaderBuilder.header(
                            for: id.peer,
                            name: name,
                            channel: channel,
                            connection: id.key.id,
                            caller: self.connections[id]?.caller
                        ),
                        promise: nil
                    )
                }
                self.driver.dialSucceeded(id)
            case .failure(let error as TLSHandshakeError):
                self.connections[id]?.dialError = "\(export.target): TLS handshake: \(error)"
                self.connections[id]?.localOutcome = error.failure.outcome
                self.driver.refuse(id, .targetRefused)
            case .failure(let error):
                var timedOut = false
                if case ChannelError.connectTimeout = error { timedOut = true }
                self.connections[id]?.dialError = "\(export.target): \(error)"
                self.driver.refuse(id, timedOut ? .targetTimedOut : .targetRefused)
            }
        }
    }
}
