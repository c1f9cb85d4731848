// SPDX-License-Identifier: Apache-2.0
import CHMXShims
import CoreMetrics
import HMXCore
import HMXStream
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The datagram flows of datagram mappings (`udp://`, `unixgram:`), like a NAT's table:
/// the importing side keeps a flow per client address, the exporting side a socket per
/// flow towards the target, so that replies find the client that asked. Flows end after
/// their mapping's idle timeout, and are limited in number like connections (a flow
/// counts as a connection of its mapping).
struct DatagramFlows {
    struct ImportFlow {
        /// The import's name.
        var mapping: String
        var client: SocketAddress
        var lastActive: NIODeadline
        var start: NIODeadline
        var idleTimeout: TimeAmount
    }

    struct ExportFlow {
        /// The export's name.
        var mapping: String
        var target: SocketAddress
        /// The socket towards the target once it is open.
        var channel: (any Channel)?
        /// Datagrams that came while the socket was being opened.
        var pending: [ByteBuffer] = []
        var pendingBytes = 0
        var lastActive: NIODeadline
        var start: NIODeadline
        var idleTimeout: TimeAmount
    }

    struct ClientKey: Hashable {
        var mapping: String
        var client: SocketAddress
    }

    /// Datagrams held per export flow while its socket opens.
    static let maximumPending = 64
    static let maximumPendingBytes = 256 * 1024

    var imports: [ConnectionID: ImportFlow] = [:]
    var importsByClient: [ClientKey: ConnectionID] = [:]
    var exports: [ConnectionID: ExportFlow] = [:]
    /// The next flow id, from a random start per run (a peer's late datagrams for our
    /// previous run's flows name flows we do not have).
    var nextID = UInt32.random(in: 1...UInt32.max)

    var count: Int { self.imports.count + self.exports.count }
}

/// Why a datagram went no further (each is counted: `hmx_datagrams_dropped_total`).
enum DatagramDropReason: String, CaseIterable {
    /// Larger than a message to the peer takes, or than a DGRAM frame may be.
    case tooLarge = "too_large"
    /// What waits for the peer is at its bound.
    case queueFull = "queue_full"
    /// The local socket could not take it now (its buffer is full).
    case socketFull = "socket_full"
    /// No flow could be made: the mapping's flow limit, or shutting down.
    case flowLimit = "flow_limit"
    /// The exporting gateway refused the flow (no export, allow-list, limit).
    case refused
    /// A reply for a flow that is gone.
    case noFlow = "no_flow"
    /// The export's socket towards its target could not be opened, or sending failed.
    case targetUnreachable = "target_unreachable"
    /// Queued for a peer that was given up (a send failed for good: its domain or its
    /// ring for us is gone); counted for the gateway, not per mapping.
    case peerUnreachable = "peer_unreachable"

    init(_ drop: StreamMultiplexer.DatagramDrop) {
        switch drop {
        case .tooLarge: self = .tooLarge
        case .queueFull: self = .queueFull
        }
    }
}

// MARK: - Imports: a datagram listener

extension Gateway {
    /// A datagram socket of the gateway: reads take the largest datagram whole, the
    /// kernel's buffers are `bufferSize`, and each datagram read goes to `onDatagram`
    /// (on the gateway's loop).
    private func datagramBootstrap(
        bufferSize: Int,
        _ onDatagram: @escaping @Sendable (Gateway, AddressedEnvelope<ByteBuffer>) -> Void
    ) -> DatagramBootstrap {
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        return DatagramBootstrap(group: self.eventLoop)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: Self.datagramReadSize))
            .channelOption(.writeBufferWaterMark, value: Self.datagramWriteBuffer)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    Self.setBufferSizes(of: channel, to: bufferSize)
                    let handler = DatagramSocketHandler { onDatagram(bound.value, $0) }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
    }

    /// Binds a datagram import's socket.
    func bindDatagram(_ importConfig: GatewayConfig.Import) -> EventLoopFuture<any Channel> {
        let bootstrap = self.datagramBootstrap(bufferSize: Self.listenerBufferSize) { gateway, envelope in
            gateway.importDatagram(importConfig, from: envelope.remoteAddress, envelope.data)
        }
        .channelOption(.socketOption(.so_reuseaddr), value: 1)
        switch importConfig.listen {
        case .udp(let host, let port): return bootstrap.bind(host: host, port: port)
        case .unixDatagram(let path): return bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true)
        case .tcp, .tls, .unix, .vsock, .seqpacket: preconditionFailure("a stream listener")
        }
    }

    /// A read buffer one byte larger than the largest datagram a flow carries: a read
    /// that fills it was a larger datagram, cut (dropped, not sent on truncated).
    static let datagramReadSize = StreamFrame.maximumDatagramLength + 1

    /// Kernel buffers of a datagram import's socket and of an export flow's socket:
    /// what a burst of datagrams finds before the gateway reads them (the kernel drops
    /// what does not fit, and counts it in its UDP RcvbufErrors).
    static let listenerBufferSize = 4 << 20
    /// Datagrams written to a socket and not yet taken by the kernel: up to this many
    /// bytes before its next ones are dropped (`socket_full`), so that what one turn
    /// writes fits.
    static let datagramWriteBuffer = ChannelOptions.Types.WriteBufferWaterMark(low: 2 << 20, high: 4 << 20)
    static let flowBufferSize = 1 << 20

    /// Sets a datagram socket's receive and send buffers: beyond the system's maximum
    /// (`net.core.rmem_max`) when the gateway may (root, before it drops privileges,
    /// or CAP_NET_ADMIN), else up to that maximum.
    static func setBufferSizes(of channel: any Channel, to size: Int) {
        guard let options = channel.syncOptions else { return }
        // SO_RCVBUFFORCE, SO_SNDBUFFORCE
        let force: [(CInt, NIOBSDSocket.Option)] = [(33, .so_rcvbuf), (32, .so_sndbuf)]
        for (forced, plain) in force {
            let option = ChannelOptions.Types.SocketOption(level: .socket, name: .init(rawValue: forced))
            if (try? options.setOption(option, value: SocketOptionValue(size))) == nil {
                try? options.setOption(.socketOption(plain), value: SocketOptionValue(size))
            }
        }
    }

    /// A datagram from a local client of a datagram import: into its flow (made on
    /// the client's first datagram), to the peer.
    func importDatagram(_ importConfig: GatewayConfig.Import, from client: SocketAddress, _ bytes: ByteBuffer) {
        let mapping = "import:\(importConfig.name)"
        guard bytes.readableBytes <= StreamFrame.maximumDatagramLength else {
            return self.dropDatagram(.tooLarge, mapping: mapping)
        }
        let now = self.driver.now
        let key = DatagramFlows.ClientKey(mapping: importConfig.name, client: client)
        let id: ConnectionID
        if let existing = self.flows.importsByClient[key] {
            id = existing
            self.flows.imports[id]?.lastActive = now
        } else {
            guard !self.isShuttingDown, self.countsByMapping[mapping, default: 0] < importConfig.maxConnections else {
                let outcome: ConnectionOutcome = self.isShuttingDown ? .shuttingDown : .limitReached
                self.mappingCounters[mapping, default: .init()].outcomes[outcome, default: 0] += 1
                return self.dropDatagram(.flowLimit, mapping: mapping)
            }
            id = self.newFlowID(to: importConfig.peer)
            self.flows.imports[id] = DatagramFlows.ImportFlow(
                mapping: importConfig.name,
                client: client,
                lastActive: now,
                start: now,
                idleTimeout: .milliseconds(importConfig.idleTimeoutMilliseconds)
            )
            self.flows.importsByClient[key] = id
            self.flowOpened(id, mapping: mapping, servicePort: importConfig.port)
        }
        self.forwardDatagram(id, servicePort: importConfig.port, Self.compacted(bytes), mapping: mapping)
    }

    /// A flow id not in use towards `peer`.
    private func newFlowID(to peer: DomainID) -> ConnectionID {
        while true {
            let id = ConnectionID(peer: peer, key: .init(id: self.flows.nextID, openedLocally: true))
            self.flows.nextID &+= 1
            if self.flows.imports[id] == nil { return id }
        }
    }

    /// Hands a datagram to the driver for the peer, counting it or its drop.
    private func forwardDatagram(_ id: ConnectionID, servicePort: UInt32, _ bytes: ByteBuffer, mapping: String) {
        if let drop = self.driver.sendDatagram(id, servicePort: servicePort, bytes) {
            return self.dropDatagram(DatagramDropReason(drop), mapping: mapping)
        }
        self.mappingCounters[mapping, default: .init()].datagramsToPeer += 1
        self.mappingCounters[mapping, default: .init()].bytesToPeer += bytes.readableBytes
        self.metrics.datagramsSent.increment()
    }

    /// A small datagram in a read buffer of 64 KiB is copied out, so that what waits
    /// for the peer holds its bytes and not the read buffer.
    static func compacted(_ bytes: ByteBuffer) -> ByteBuffer {
        guard bytes.capacity > 2 * bytes.readableBytes + 4096 else { return bytes }
        var copy = ByteBufferAllocator().buffer(capacity: bytes.readableBytes)
        copy.writeImmutableBuffer(bytes)
        return copy
    }

    func dropDatagram(_ reason: DatagramDropReason, mapping: String) {
        self.mappingCounters[mapping, default: .init()].datagramsDropped[reason, default: 0] += 1
        self.metrics.datagramsDropped[reason]?.increment()
    }

    /// A flow starts: it counts as a connection of its mapping (limits, status).
    private func flowOpened(_ id: ConnectionID, mapping: String, servicePort: UInt32) {
        self.countsByMapping[mapping, default: 0] += 1
        self.countsByPeer[PeerMapping(mapping: mapping, peer: id.peer), default: 0] += 1
        self.mappingCounters[mapping, default: .init()].opened += 1
        self.metrics.count(.opened, imported: id.key.openedLocally)
        self.auditFlow(id, mapping: mapping, servicePort: servicePort, event: "opened", outcome: "opened")
    }

    private func flowEnded(_ id: ConnectionID, mapping: String, start: NIODeadline, outcome: String, reason: String?) {
        self.countsByMapping[mapping, default: 1] -= 1
        let key = PeerMapping(mapping: mapping, peer: id.peer)
        if self.countsByPeer[key, default: 1] <= 1 {
            self.countsByPeer[key] = nil
        } else {
            self.countsByPeer[key]! -= 1
        }
        let name = String(mapping.split(separator: ":", maxSplits: 1).last ?? "")
        let servicePort =
            id.key.openedLocally
            ? self.config.imports.first { $0.name == name }?.port : self.config.exports.first { $0.name == name }?.port
        self.auditFlow(
            id,
            mapping: mapping,
            servicePort: servicePort,
            event: "ended",
            outcome: outcome,
            reason: reason,
            duration: self.driver.now - start
        )
    }

    private func auditFlow(
        _ id: ConnectionID,
        mapping: String,
        servicePort: UInt32?,
        event: String,
        outcome: String,
        reason: String? = nil,
        duration: TimeAmount? = nil
    ) {
        guard let audit = self.audit else { return }
        audit.write(
            AuditLog.Record(
                event: event,
                mapping: String(mapping.split(separator: ":", maxSplits: 1).last ?? ""),
                direction: id.key.openedLocally ? "import" : "export",
                peer: id.peer,
                peerName: self.config.peerName(of: id.peer) ?? "",
                servicePort: servicePort,
                outcome: outcome,
                reason: reason,
                durationMilliseconds: duration.map { $0.nanoseconds / 1_000_000 }
            )
        )
    }
}

// MARK: - Datagrams and flow ends from peers

extension Gateway {
    /// A datagram from a peer: a reply on one of our import flows, or a datagram of a
    /// flow the peer opened to one of our exports.
    func receivedDatagram(_ id: ConnectionID, servicePort: UInt32, _ bytes: ByteBuffer) {
        if id.key.openedLocally {
            guard let flow = self.flows.imports[id] else {
                // The flow ended here (idle): the reply has nowhere to go.
                return self.dropDatagram(.noFlow, mapping: "-")
            }
            let mapping = "import:\(flow.mapping)"
            self.flows.imports[id]!.lastActive = self.driver.now
            guard let channel = self.listeners[flow.mapping]?.channel else {
                return self.dropDatagram(.noFlow, mapping: mapping)
            }
            self.writeDatagram(bytes, to: flow.client, on: channel, mapping: mapping)
            return
        }
        if let flow = self.flows.exports[id] {
            let mapping = "export:\(flow.mapping)"
            self.flows.exports[id]!.lastActive = self.driver.now
            if let channel = flow.channel {
                self.writeDatagram(bytes, to: flow.target, on: channel, mapping: mapping)
            } else if flow.pending.count < DatagramFlows.maximumPending,
                flow.pendingBytes + bytes.readableBytes <= DatagramFlows.maximumPendingBytes
            {
                self.flows.exports[id]!.pending.append(bytes)
                self.flows.exports[id]!.pendingBytes += bytes.readableBytes
            } else {
                self.dropDatagram(.socketFull, mapping: mapping)
            }
            return
        }
        self.admitFlow(id, servicePort: servicePort, bytes)
    }

    /// Writes a datagram to a local socket (flushed when the turn ends), or drops it if
    /// the socket cannot take more now.
    private func writeDatagram(_ bytes: ByteBuffer, to address: SocketAddress, on channel: any Channel, mapping: String)
    {
        guard channel.isWritable else { return self.dropDatagram(.socketFull, mapping: mapping) }
        self.mappingCounters[mapping, default: .init()].datagramsFromPeer += 1
        self.mappingCounters[mapping, default: .init()].bytesFromPeer += bytes.readableBytes
        self.metrics.datagramsReceived.increment()
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        channel.write(AddressedEnvelope(remoteAddress: address, data: bytes)).whenFailure { _ in
            bound.value.dropDatagram(.targetUnreachable, mapping: mapping)
        }
        if !self.datagramChannelsToFlush.contains(where: { $0 === channel }) {
            self.datagramChannelsToFlush.append(channel)
        }
    }

    /// Flushes the datagram sockets written to in this turn.
    func flushDatagramSockets() {
        guard !self.datagramChannelsToFlush.isEmpty else { return }
        for channel in self.datagramChannelsToFlush { channel.flush() }
        self.datagramChannelsToFlush.removeAll(keepingCapacity: true)
    }

    /// The first datagram of a flow a peer opened: the export, its allow-list and
    /// limits as for a connection, then a socket towards the target.
    private func admitFlow(_ id: ConnectionID, servicePort: UInt32, _ bytes: ByteBuffer) {
        let decision = self.config.admission(of: id.peer, to: servicePort, datagram: true) { mapping, peer in
            (
                self.countsByMapping[mapping, default: 0],
                self.countsByPeer[PeerMapping(mapping: mapping, peer: peer), default: 0]
            )
        }
        let export: GatewayConfig.Export
        switch decision {
        case .admitted(let admitted) where !self.isShuttingDown: export = admitted
        case .admitted(let admitted):
            self.mappingCounters["export:\(admitted.name)", default: .init()].outcomes[.shuttingDown, default: 0] += 1
            return self.driver.closeDatagramFlow(id, reason: .shuttingDown)
        case .refused(let reason, let exportName):
            let outcome = ConnectionOutcome(refused: reason)
            if let exportName {
                self.mappingCounters["export:\(exportName)", default: .init()].outcomes[outcome, default: 0] += 1
            } else {
                self.unmappedRefusals[outcome, default: 0] += 1
            }
            self.limited(.refusedOpen, from: id.peer) { suppressed in
                var logger = self.connectionLogger(id, mapping: exportName ?? "-")
                if suppressed > 0 { logger[metadataKey: "suppressed"] = "\(suppressed)" }
                logger.warning("datagram flow refused", metadata: ["reason": "\(reason)"])
            }
            return self.driver.closeDatagramFlow(id, reason: reason)
        }
        let mapping = "export:\(export.name)"
        let target: SocketAddress
        do {
            switch export.target {
            case .udp(let host, let port): target = try SocketAddress.makeAddressResolvingHost(host, port: port)
            case .unixDatagram(let path): target = try SocketAddress(unixDomainSocketPath: path)
            case .tcp, .tls, .unix, .vsock, .seqpacket: preconditionFailure("a stream target")
            }
        } catch {
            self.limited(.refusedOpen, from: id.peer) { _ in
                self.logger.warning(
                    "datagram target unusable",
                    metadata: ["mapping": "\(export.name)", "error": "\(error)"]
                )
            }
            self.dropDatagram(.targetUnreachable, mapping: mapping)
            return self.driver.closeDatagramFlow(id, reason: .targetRefused)
        }
        let now = self.driver.now
        self.flows.exports[id] = DatagramFlows.ExportFlow(
            mapping: export.name,
            target: target,
            pending: [bytes],
            pendingBytes: bytes.readableBytes,
            lastActive: now,
            start: now,
            idleTimeout: .milliseconds(export.idleTimeoutMilliseconds)
        )
        self.flowOpened(id, mapping: mapping, servicePort: export.port)
        self.openFlowSocket(id, export: export, target: target)
    }

    /// Opens the export flow's own socket (so the target's replies name the flow):
    /// UDP from the source domain's address if `source_address` says so, or a Unix
    /// datagram socket with a kernel-chosen abstract name.
    private func openFlowSocket(_ id: ConnectionID, export: GatewayConfig.Export, target: SocketAddress) {
        let bootstrap = self.datagramBootstrap(bufferSize: Self.flowBufferSize) { gateway, envelope in
            gateway.targetReplied(id, from: envelope.remoteAddress, envelope.data)
        }
        let future: EventLoopFuture<any Channel>
        switch export.target {
        case .udp:
            let local: String
            if let prefix = export.sourceAddress {
                local = prefix.text(for: id.peer)
            } else {
                local = target.protocol == .inet6 ? "::" : "0.0.0.0"
            }
            future = bootstrap.bind(host: local, port: 0)
        default:
            let descriptor = chmx_unix_dgram_autobind()
            if descriptor < 0 {
                future = self.eventLoop.makeFailedFuture(IOError(errnoCode: errno, reason: "socket"))
            } else {
                future = bootstrap.withBoundSocket(descriptor)
            }
        }
        future.assumeIsolated().whenComplete { result in
            guard var flow = self.flows.exports[id] else {
                // Gone meanwhile (the peer ended it, or the gateway stops).
                if case .success(let channel) = result { channel.close(promise: nil) }
                return
            }
            let mapping = "export:\(flow.mapping)"
            switch result {
            case .success(let channel):
                flow.channel = channel
                let pending = flow.pending
                flow.pending = []
                flow.pendingBytes = 0
                self.flows.exports[id] = flow
                for bytes in pending { self.writeDatagram(bytes, to: flow.target, on: channel, mapping: mapping) }
                self.flushDatagramSockets()
            case .failure(let error):
                self.limited(.refusedOpen, from: id.peer) { _ in
                    self.logger.warning(
                        "cannot open a socket for a datagram flow",
                        metadata: ["mapping": "\(flow.mapping)", "error": "\(error)"]
                    )
                }
                for _ in flow.pending { self.dropDatagram(.targetUnreachable, mapping: mapping) }
                self.endExportFlow(id, outcome: .targetRefused, notify: .targetRefused)
            }
        }
    }

    /// A datagram from an export flow's target: back to the peer on that flow. Only
    /// the target may answer on the flow's socket; anything else is ignored.
    func targetReplied(_ id: ConnectionID, from address: SocketAddress, _ bytes: ByteBuffer) {
        guard let flow = self.flows.exports[id] else { return }
        let mapping = "export:\(flow.mapping)"
        guard address == flow.target else { return }
        guard bytes.readableBytes <= StreamFrame.maximumDatagramLength else {
            return self.dropDatagram(.tooLarge, mapping: mapping)
        }
        self.flows.exports[id]!.lastActive = self.driver.now
        self.forwardDatagram(id, servicePort: 0, Self.compacted(bytes), mapping: mapping)
    }

    /// The peer ended or refused a flow.
    func datagramFlowClosed(_ id: ConnectionID, reason: StreamFrame.RefuseReason?) {
        if id.key.openedLocally {
            guard let flow = self.flows.imports[id] else { return }
            if let reason {
                let mapping = "import:\(flow.mapping)"
                let outcome = ConnectionOutcome(refused: reason)
                self.mappingCounters[mapping, default: .init()].outcomes[outcome, default: 0] += 1
                self.dropDatagram(.refused, mapping: mapping)
                self.limited(.refusedOpen, from: id.peer) { suppressed in
                    var logger = self.connectionLogger(id, mapping: flow.mapping)
                    if suppressed > 0 { logger[metadataKey: "suppressed"] = "\(suppressed)" }
                    logger.warning("datagram flow refused by the peer", metadata: ["reason": "\(reason)"])
                }
            }
            self.endImportFlow(id, outcome: reason.map { ConnectionOutcome(refused: $0) }, notify: false)
        } else {
            self.endExportFlow(id, outcome: nil, notify: nil)
        }
    }

    /// Ends an import flow; `notify`: tell the peer (it ended here).
    private func endImportFlow(_ id: ConnectionID, outcome: ConnectionOutcome?, notify: Bool) {
        guard let flow = self.flows.imports.removeValue(forKey: id) else { return }
        self.flows.importsByClient[DatagramFlows.ClientKey(mapping: flow.mapping, client: flow.client)] = nil
        if notify { self.driver.closeDatagramFlow(id, reason: nil) }
        self.flowEnded(
            id,
            mapping: "import:\(flow.mapping)",
            start: flow.start,
            outcome: outcome?.rawValue ?? "closed",
            reason: outcome.map { _ in "refused by the peer" }
        )
    }

    /// Ends an export flow and closes its socket; `notify`: tell the peer why (nil:
    /// the peer ended it).
    private func endExportFlow(
        _ id: ConnectionID,
        outcome: ConnectionOutcome?,
        notify: StreamFrame.RefuseReason??
    ) {
        guard let flow = self.flows.exports.removeValue(forKey: id) else { return }
        flow.channel?.close(promise: nil)
        if let notify { self.driver.closeDatagramFlow(id, reason: notify) }
        if let outcome {
            self.mappingCounters["export:\(flow.mapping)", default: .init()].outcomes[outcome, default: 0] += 1
        }
        self.flowEnded(
            id,
            mapping: "export:\(flow.mapping)",
            start: flow.start,
            outcome: outcome?.rawValue ?? "closed",
            reason: nil
        )
    }

    /// Ends the flows idle for longer than their mapping's idle timeout (and tells the
    /// peer, so that its side goes too). Called every second.
    func expireIdleFlows() {
        let now = self.driver.now
        for (id, flow) in self.flows.imports where now - flow.lastActive >= flow.idleTimeout {
            self.endImportFlow(id, outcome: nil, notify: true)
        }
        for (id, flow) in self.flows.exports where now - flow.lastActive >= flow.idleTimeout {
            self.endExportFlow(id, outcome: nil, notify: .some(nil))
        }
    }

    /// Ends every flow (shutdown).
    func endAllFlows() {
        for id in self.flows.imports.keys { self.endImportFlow(id, outcome: nil, notify: true) }
        for id in self.flows.exports.keys { self.endExportFlow(id, outcome: nil, notify: .some(nil)) }
    }
}

// MARK: - The socket handler

/// A datagram socket of the gateway: each datagram read goes to `onDatagram` (an
/// import's listener: from a client; an export flow's socket: from the target).
final class DatagramSocketHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let onDatagram: (AddressedEnvelope<ByteBuffer>) -> Void

    init(onDatagram: @escaping (AddressedEnvelope<ByteBuffer>) -> Void) {
        self.onDatagram = onDatagram
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.onDatagram(Self.unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A datagram socket reports errors of earlier sends (ICMP port unreachable:
        // ECONNREFUSED); the socket itself is fine.
    }
}

@available(*, unavailable)
extension DatagramSocketHandler: Sendable {}
