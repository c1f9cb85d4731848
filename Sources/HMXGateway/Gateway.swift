// SPDX-License-Identifier: Apache-2.0
import CoreMetrics
import HMXCore
import HMXStream
import Logging
import NIOCore
import NIOPosix

/// The gateway on its event loop: configuration and glue around a ``StreamDriver``.
///
/// ```
///  local app ⇄ socket ⇄ StreamGlueHandler ──events──▶ StreamDriver (HMXStream) ⇄ HMX link
///                              ▲  (a StreamSocket)          │
///                              └───── write/read/close ◀────┤
///                            Gateway.perform ◀──────────────┘ outcomes, notices
/// ```
///
/// The gateway owns what is about mappings: import listeners, export admission
/// (export lookup, allow-list by the hypervisor-stamped domain, limits) and dialling
/// with PROXY v2, per-mapping connection counts, metrics and logs. The stream protocol
/// itself (connections, credit, peers, rings) is the driver's.
final class Gateway {
    struct PeerMapping: Hashable {
        var mapping: String
        var peer: DomainID
    }

    /// What the gateway keeps per connection.
    struct Connection {
        /// `import:NAME` or `export:NAME`, for the per-mapping limit.
        var mapping: String
        var logger: Logger
        var handler: StreamGlueHandler?
        /// Why the dial of the export's target failed, for the log.
        var dialError: String?
        /// The service port of the mapping (for audit records).
        var servicePort: UInt32
        var start: NIODeadline
        /// How it ended, if not cleanly (for the audit record).
        var end: ConnectionEnd?
        /// What its end counts as here when the wire's reason says less (a TLS
        /// handshake with the target failed: the peer hears target_refused).
        var localOutcome: ConnectionOutcome?
        /// Who the caller on another host is, as a relay asserted it (exports whose
        /// `relays` include the peer), for the target's PROXY header.
        var caller: CallerIdentity?
    }

    private(set) var config: GatewayConfig
    let driver: StreamDriver
    let logger: Logger
    let metrics: GatewayMetrics
    var eventLoop: any EventLoop { self.driver.eventLoop }
    var connections: [ConnectionID: Connection] = [:]
    var countsByMapping: [String: Int] = [:]
    /// Connections per export and peer, for `max_connections_per_peer`.
    var countsByPeer: [PeerMapping: Int] = [:]
    var listeners: [String: (importConfig: GatewayConfig.Import, channel: any Channel)] = [:]
    private var reportedStatistics = StreamStatistics()
    private var reportedActiveConnections = 0
    /// Rate limits the warnings peers provoke.
    var warnings = WarningLimiter()
    /// When a failed accept was last logged.
    var lastAcceptWarning = NIODeadline.distantPast
    private(set) var isShuttingDown = false
    /// Where audit records go (`audit:` in the configuration).
    var audit: AuditLog?
    /// Listening sockets from the service manager, by import name (taken at start).
    var inheritedListeners = InheritedListeners()
    /// False once the hypervisor link has closed.
    private(set) var isLinkUp = true
    /// Where the driver continues left-over work (after the loop's ready I/O).
    private var loopYield: LoopYield?
    /// What each mapping carried and how its connections ended, by `import:NAME` /
    /// `export:NAME` (for `status`); mappings a reload removed are dropped.
    var mappingCounters: [String: MappingCounters] = [:]
    /// OPENs refused before any export was found (no such service, shutting down).
    var unmappedRefusals: [ConnectionOutcome: Int] = [:]
    let startedAt = NIODeadline.now()
    /// Datagram flows (datagram mappings).
    var flows = DatagramFlows()
    /// Datagram sockets written to in this turn (flushed when it ends).
    var datagramChannelsToFlush: [any Channel] = []
    /// Ends idle datagram flows, every second.
    private var flowExpiry: RepeatedTask?
    /// Clients of an import still in their TLS handshake or PROXY header, by import
    /// name, and their channels.
    var frontPending: [String: Int] = [:]
    var frontPendingChannels: Set<ObjectIdentifier> = []
    /// TLS for tls:// mappings (nil: this build or embedding has none).
    let tls: (any GatewayTLS)?

    init(
        config: GatewayConfig,
        link: any HMXLink,
        logger: Logger,
        metrics: GatewayMetrics = GatewayMetrics(),
        audit: AuditLog? = nil,
        tls: (any GatewayTLS)? = nil
    ) {
        self.config = config
        self.tls = tls
        self.audit = audit
        self.logger = logger
        self.metrics = metrics
        self.driver = StreamDriver(link: link, configuration: Self.driverConfiguration(config))
        self.driver.delegate = self
        // Made on the link's loop, like everything of the gateway.
        link.closeFuture.assumeIsolated().whenComplete { [weak self] _ in self?.isLinkUp = false }
    }

    static func driverConfiguration(_ config: GatewayConfig) -> StreamDriver.Configuration {
        StreamDriver.Configuration(
            port: config.link.port,
            ringSize: config.link.ringSize,
            multiplexer: StreamMultiplexer.Configuration(
                window: config.window,
                maximumWindow: config.effectiveWindowMax,
                windowPool: config.windowPool,
                peerInFlight: config.peerInFlight
            )
        )
    }

    var activeConnectionCount: Int { self.driver.activeConnectionCount }

    // MARK: - Start and stop

    /// Registers rings, then binds the import listeners: an OPEN sent before our ring
    /// for its peer exists gets no answer (the peer cannot send it), so listeners wait
    /// for each partner ring's first answer from the hypervisor.
    func start() -> EventLoopFuture<Void> {
        LoopYield.makePipe(on: self.eventLoop).assumeIsolated().flatMapThrowing { pipe in
            let yield = try LoopYield(pipe)
            self.loopYield = yield
            self.driver.yieldToIO = { yield.schedule($0) }
        }.flatMap {
            self.driver.start(partners: self.config.partnerDomains, wildcard: self.config.wantsWildcardRing)
        }.flatMap {
            EventLoopFuture.andAllSucceed(self.config.imports.map { self.bind($0) }, on: self.eventLoop)
        }.map {
            let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
            self.flowExpiry = self.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
                bound.value.expireIdleFlows()
            }
            for (name, descriptor) in self.inheritedListeners.byName {
                self.logger.warning(
                    "a socket from the service manager names no import; closing it",
                    metadata: ["name": "\(name)", "descriptor": "\(descriptor)"]
                )
                close(descriptor)
            }
            self.inheritedListeners = InheritedListeners()
        }.nonisolated()
    }

    /// Graceful shutdown: stop listening, refuse new connections, wait for open ones
    /// up to the drain timeout, then reset the rest and unregister the rings.
    func shutdown() -> EventLoopFuture<Void> {
        self.isShuttingDown = true
        self.driver.stopAccepting()
        for (_, listener) in self.listeners { listener.channel.close(promise: nil) }
        self.listeners.removeAll()
        self.flowExpiry?.cancel()
        self.flowExpiry = nil
        self.endAllFlows()
        self.flushDatagramSockets()
        let promise = self.eventLoop.makePromise(of: Void.self)
        if self.activeConnectionCount > 0 {
            self.logger.info("draining", metadata: ["connections": "\(self.activeConnectionCount)"])
        }
        self.waitForDrain(until: .now() + .milliseconds(self.config.drainTimeoutMilliseconds), promise: promise)
        return promise.futureResult
    }

    private func waitForDrain(until deadline: NIODeadline, promise: EventLoopPromise<Void>) {
        if self.activeConnectionCount == 0 || NIODeadline.now() >= deadline {
            self.driver.stop()
            self.driver.yieldToIO = nil
            self.loopYield?.close()
            self.loopYield = nil
            promise.succeed(())
            return
        }
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        self.eventLoop.scheduleTask(in: .milliseconds(50)) {
            bound.value.waitForDrain(until: deadline, promise: promise)
        }
    }

    // MARK: - Reload

    /// Applies a new configuration: exports at once (open connections keep going),
    /// import listeners added/removed/changed, rings for new peers.
    func reload(_ newConfig: GatewayConfig) -> EventLoopFuture<Void> {
        guard newConfig.link == self.config.link else {
            self.logger.error(
                "reload: the link settings (emulator, port, ring_size) need a restart; keeping the running configuration"
            )
            return self.eventLoop.makeSucceededVoidFuture()
        }
        self.config = newConfig
        self.reopenAudit()
        let mappings = Set(
            newConfig.exports.map { "export:\($0.name)" } + newConfig.imports.map { "import:\($0.name)" }
        )
        self.mappingCounters = self.mappingCounters.filter { key, _ in
            mappings.contains(key) || self.countsByMapping[key, default: 0] > 0
        }
        self.driver.update(Self.driverConfiguration(newConfig).multiplexer)
        for (name, listener) in self.listeners where !newConfig.imports.contains(listener.importConfig) {
            listener.channel.close(promise: nil)
            self.listeners[name] = nil
            self.logger.info("import removed", metadata: ["mapping": "\(name)"])
        }
        let added = newConfig.imports.filter { importConfig in
            !self.listeners.values.contains { $0.importConfig == importConfig }
        }
        self.driver.addPartners(newConfig.partnerDomains)
        if newConfig.wantsWildcardRing { self.driver.registerWildcardRing() }
        self.logger.info(
            "configuration reloaded",
            metadata: ["exports": "\(newConfig.exports.map(\.name))", "imports": "\(newConfig.imports.map(\.name))"]
        )
        // A changed listener is closed above and bound again here; give the old
        // socket a moment to go away.
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        let binds = added.map { importConfig in
            self.eventLoop.flatScheduleTask(in: .milliseconds(20)) { bound.value.bind(importConfig) }.futureResult
        }
        return EventLoopFuture.andAllSucceed(binds, on: self.eventLoop)
    }

    // MARK: - Connections

    func add(_ id: ConnectionID, _ connection: Connection) {
        self.connections[id] = connection
        self.countsByMapping[connection.mapping, default: 0] += 1
        self.countsByPeer[PeerMapping(mapping: connection.mapping, peer: id.peer), default: 0] += 1
    }

    /// A logger with the connection's peer and mapping.
    func connectionLogger(_ id: ConnectionID, mapping: String) -> Logger {
        var logger = self.logger
        logger[metadataKey: "peer"] = "\(self.config.name(of: id.peer))"
        logger[metadataKey: "connection"] = "\(id.key)"
        logger[metadataKey: "mapping"] = "\(mapping)"
        return logger
    }
}

// MARK: - The driver's actions

extension Gateway: StreamDriverDelegate {
    func perform(_ action: StreamAction) {
        switch action {
        case .opened(let id):
            self.metrics.count(.opened, imported: id.key.openedLocally)
            if let mapping = self.connections[id]?.mapping {
                self.mappingCounters[mapping, default: .init()].opened += 1
            }
            self.connections[id]?.logger.debug("connection open")
            self.auditConnection(id, event: "opened")
        case .ended(let id, let end):
            let outcome = self.connections[id]?.localOutcome ?? end.outcome
            self.metrics.count(outcome, imported: id.key.openedLocally)
            self.log(end, of: id)
            self.connections[id]?.end = end
            if let mapping = self.connections[id]?.mapping {
                self.mappingCounters[mapping, default: .init()].outcomes[outcome, default: 0] += 1
            }
        case .removed(let id):
            self.auditConnection(id, event: "ended")
            guard let connection = self.connections.removeValue(forKey: id) else { return }
            connection.handler?.detach()
            self.mappingCounters[connection.mapping, default: .init()].add(connection.handler)
            self.countsByMapping[connection.mapping, default: 1] -= 1
            let key = PeerMapping(mapping: connection.mapping, peer: id.peer)
            if self.countsByPeer[key, default: 1] <= 1 {
                self.countsByPeer[key] = nil
            } else {
                self.countsByPeer[key]! -= 1
            }
        case .openRefused(let id, let reason):
            self.metrics.count(ConnectionOutcome(refused: reason), imported: false)
            self.unmappedRefusals[ConnectionOutcome(refused: reason), default: 0] += 1
            self.limited(.refusedOpen, from: id.peer) { suppressed in
                self.logger.warning(
                    "connection refused",
                    metadata: [
                        "peer": "\(self.config.name(of: id.peer))", "connection": "\(id.key)", "reason": "\(reason)",
                        "suppressed": "\(suppressed)",
                    ]
                )
            }
        case .notice(let notice):
            self.log(notice)
        case .datagram(let id, let servicePort, let bytes):
            self.receivedDatagram(id, servicePort: servicePort, bytes)
        case .datagramClosed(let id, let reason):
            self.datagramFlowClosed(id, reason: reason)
        case .write, .read, .shutdownOutput, .abort, .incomingOpen, .registerRing, .registerRingLater,
            .queryMessageSize, .ringLost:
            // The sockets' and the driver's own.
            break
        }
    }

    func turnEnded(_ statistics: StreamStatistics) {
        self.flushDatagramSockets()
        if statistics != self.reportedStatistics {
            self.metrics.report(statistics, since: self.reportedStatistics)
            self.reportedStatistics = statistics
        }
        let active = self.activeConnectionCount
        if active != self.reportedActiveConnections {
            self.metrics.activeConnections.set(active)
            self.reportedActiveConnections = active
        }
        if self.warnings.hasPending { self.reportSuppressedWarnings() }
    }
}

@available(*, unavailable)
extension Gateway: Sendable {}
