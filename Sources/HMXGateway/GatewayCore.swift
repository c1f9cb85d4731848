// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import CoreMetrics
import Logging
import NIOCore
import NIOPosix

/// The gateway's data plane, confined to one event loop: the HMX link and its rings,
/// one ``PeerLink`` per peer domain, the connections, and the import listeners.
///
/// ```
///  local app ⇄ socket ⇄ StreamGlueHandler ⇄ StreamConnection ⇄ PeerLink ⇄ HMX link
///                                                  ▲                           │
///                                                  └── frames from the rings ◀─┘
/// ```
///
/// Ring topology: one partner-specific ring per peer domain named in the
/// configuration (all connections with that peer share it), plus a wildcard ring
/// only if an export allows `any`. Every ring is drained completely on each event
/// into per-connection socket writes bounded by the flow-control window, so one slow
/// application never blocks the ring for the others.
final class GatewayCore {
    struct ConnectionID: Hashable {
        var peer: DomainID
        var key: StreamFrame.ConnectionKey
    }

    private(set) var config: GatewayConfig
    let link: any HMXLink
    let eventLoop: any EventLoop
    let logger: Logger
    let metrics: GatewayMetrics
    /// Identifies this run of the gateway: a peer that sees it change knows we restarted.
    let instance = UInt64.random(in: 1...UInt64.max)
    private var peers: [DomainID: PeerLink] = [:]
    private var partnerRings: [DomainID: HMXRing] = [:]
    private var wildcardRing: HMXRing?
    private var connections: [ConnectionID: StreamConnection] = [:]
    private var countsByMapping: [String: Int] = [:]
    private var nextLocalID: [DomainID: UInt32] = [:]
    private var listeners: [String: (importConfig: GatewayConfig.Import, channel: any Channel)] = [:]
    private var needsFlush: [StreamConnection] = []
    private var timers: [RepeatedTask] = []
    private(set) var isShuttingDown = false
    private var nextNonce: UInt64 = 1
    /// Bytes by which live connections' windows have grown beyond `config.window`.
    private(set) var windowPoolInUse = 0

    /// How often peers with connections are pinged, and when silence means death.
    static let keepaliveInterval = TimeAmount.seconds(1)
    static let peerTimeout = TimeAmount.seconds(4)
    /// A peer with connections that has been silent this long: check our ring for it.
    static let silenceBeforeRingCheck = TimeAmount.milliseconds(1500)

    init(config: GatewayConfig, link: any HMXLink, logger: Logger) {
        self.config = config
        self.link = link
        self.eventLoop = link.eventLoop
        self.logger = logger
        self.metrics = GatewayMetrics()
    }

    var activeConnectionCount: Int { self.connections.count }

    // MARK: - Start and stop

    /// Registers rings, binds the import listeners and starts the timers.
    func start() -> EventLoopFuture<Void> {
        self.link.setEventHandler { [loop = self.eventLoop, bound = NIOLoopBound(self, eventLoop: self.eventLoop)] in
            loop.assertInEventLoop()
            bound.value.onEvent()
        }
        let firstAnswers = self.config.partnerDomains.map { domain in
            let answered = self.eventLoop.makePromise(of: Void.self)
            self.registerRing(for: domain, answered: answered)
            return answered.futureResult
        }
        if self.config.wantsWildcardRing { self.registerWildcardRing() }
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        self.timers.append(
            self.eventLoop.scheduleRepeatedTask(initialDelay: Self.keepaliveInterval, delay: Self.keepaliveInterval) { _ in
                bound.value.tick()
            }
        )
        // The import listeners open once each partner ring has had its first answer: an
        // OPEN sent before our ring for that peer exists gets no ACCEPT (the peer cannot
        // send it), and the client would wait for nothing.
        return EventLoopFuture.andAllComplete(firstAnswers, on: self.eventLoop).assumeIsolated().flatMap {
            EventLoopFuture.andAllSucceed(self.config.imports.map { self.bind($0) }, on: self.eventLoop)
        }.nonisolated()
    }

    /// Peers whose ring registration is under way (so the tick does not start another).
    private var registering: Set<DomainID> = []

    /// - Parameter answered: succeeded when this attempt has its answer, whatever it is.
    private func registerRing(for domain: DomainID, attempt: Int = 0, answered: EventLoopPromise<Void>? = nil) {
        guard attempt > 0 || !self.registering.contains(domain) else {
            answered?.succeed(())
            return
        }
        self.registering.insert(domain)
        let peer = self.peer(domain)
        self.link.registerRing(port: self.config.link.port, partner: domain, length: self.config.link.ringSize, failIfExists: false)
            .assumeIsolated().whenComplete { result in
                defer { answered?.succeed(()) }
                if case .failure(let error as HMXError) = result, error.errno == .ESRCH, !self.isShuttingDown,
                    attempt < 4
                {
                    // The peer domain is starting: try again soon (100, 200, 400, 800 ms),
                    // then leave it to the once-a-second tick.
                    peer.hasRing = false
                    let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
                    self.eventLoop.scheduleTask(in: .milliseconds(100 << Int64(attempt))) {
                        bound.value.registerRing(for: domain, attempt: attempt + 1)
                    }
                    return
                }
                self.registering.remove(domain)
                switch result {
                case .success(let ring):
                    self.partnerRings[domain] = ring
                    peer.hasRing = true
                    self.resetOpensSentWithoutRing(to: peer)
                    self.logger.info("ring registered for peer", metadata: ["peer": "\(self.config.name(of: domain))"])
                    self.refreshPeerSize(peer)
                    self.onEvent()
                case .failure(let error as HMXError) where error.errno == .ESRCH:
                    // The peer domain is not running yet; the tick retries.
                    peer.hasRing = false
                case .failure(let error):
                    peer.hasRing = false
                    self.logger.error(
                        "cannot register the ring for a peer",
                        metadata: ["peer": "\(self.config.name(of: domain))", "error": "\(error)"]
                    )
                }
            }
    }

    private func registerWildcardRing() {
        self.link.registerRing(port: self.config.link.port, partner: .any, length: self.config.link.ringSize, failIfExists: false)
            .assumeIsolated().whenComplete { result in
                switch result {
                case .success(let ring):
                    self.wildcardRing = ring
                case .failure(let error as HMXError) where error.errno == .EPERM:
                    // Xen refuses wildcard rings unless booted with mac-permissive=1. The
                    // gateway keeps running: partner rings still carry every named peer.
                    let names = self.config.exports.filter { $0.allow == .any }.map(\.name).joined(separator: ", ")
                    self.logger.error(
                        """
                        the hypervisor refused the wildcard ring (EPERM) that exports [\(names)] need to accept any domain: \
                        on Xen, wildcard rings need the hypervisor booted with argo=1,mac-permissive=1; until then only \
                        domains with a partner ring (import peers and domains named in an allow-list) can reach those exports
                        """,
                        metadata: ["error": "\(error)"]
                    )
                case .failure(let error):
                    let names = self.config.exports.filter { $0.allow == .any }.map(\.name).joined(separator: ", ")
                    self.logger.error(
                        "cannot register the wildcard ring that exports [\(names)] need to accept any domain",
                        metadata: ["error": "\(error)"]
                    )
                }
            }
    }

    /// Learns how large a message the peer's ring takes. Asked when our ring for the
    /// peer is registered, and again while the answer is unknown (the peer's gateway
    /// may start after ours: until its ring exists, messages stay at the minimum size)
    /// or stale (the peer restarted, perhaps with another ring size).
    private func refreshPeerSize(_ peer: PeerLink) {
        guard !peer.isQueryingMessageSize else { return }
        peer.isQueryingMessageSize = true
        peer.lastMessageSizeQuery = .now()
        self.link.notify([HMXNotifyQuery(ring: peer.destination, spaceRequired: 0)]).assumeIsolated().whenComplete { result in
            peer.isQueryingMessageSize = false
            if case .success(let results) = result, let ring = results.first, ring.flags.contains(.exists),
                ring.maxMessageSize >= 64
            {
                peer.maximumMessageSize = Int(min(ring.maxMessageSize, 1 << 20))
                peer.isMessageSizeKnown = true
            }
        }
    }

    /// Asks for the peer's ring size if it is not known yet, at most every 100 ms.
    private func refreshPeerSizeIfUnknown(_ peer: PeerLink, now: NIODeadline = .now()) {
        guard !peer.isMessageSizeKnown, now - peer.lastMessageSizeQuery >= .milliseconds(100) else { return }
        self.refreshPeerSize(peer)
    }

    private func bind(_ importConfig: GatewayConfig.Import) -> EventLoopFuture<Void> {
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        let bootstrap = ServerBootstrap(group: self.eventLoop)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16384, maximum: 262144))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = StreamGlueHandler(connection: nil) { channel in
                        bound.value.accepted(channel, for: importConfig)
                    }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let future: EventLoopFuture<any Channel>
        switch importConfig.listen {
        case .tcp(let host, let port): future = bootstrap.bind(host: host, port: port)
        case .unix(let path): future = bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true)
        case .vsock(let cid, let port): future = bootstrap.bind(to: VsockAddress(cid: .init(rawValue: cid), port: .init(rawValue: port)))
        }
        return future.assumeIsolated().map { channel in
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

    /// Graceful shutdown: stop listening, refuse new connections, wait for open ones
    /// up to the drain timeout, then reset the rest and unregister the rings.
    func shutdown() -> EventLoopFuture<Void> {
        self.isShuttingDown = true
        for (_, listener) in self.listeners { listener.channel.close(promise: nil) }
        self.listeners.removeAll()
        let promise = self.eventLoop.makePromise(of: Void.self)
        if !self.connections.isEmpty {
            self.logger.info("draining", metadata: ["connections": "\(self.connections.count)"])
        }
        self.waitForDrain(until: .now() + .milliseconds(self.config.drainTimeoutMilliseconds), promise: promise)
        return promise.futureResult
    }

    private func waitForDrain(until deadline: NIODeadline, promise: EventLoopPromise<Void>) {
        if self.connections.isEmpty || NIODeadline.now() >= deadline {
            self.finalStop()
            promise.succeed(())
            return
        }
        let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
        self.eventLoop.scheduleTask(in: .milliseconds(50)) { bound.value.waitForDrain(until: deadline, promise: promise) }
    }

    private func finalStop() {
        for connection in Array(self.connections.values) {
            connection.terminate(.shuttingDown, resetReason: .shuttingDown)
        }
        for timer in self.timers { timer.cancel() }
        self.timers.removeAll()
        for ring in self.partnerRings.values { _ = self.link.unregisterRing(ring) }
        if let ring = self.wildcardRing { _ = self.link.unregisterRing(ring) }
        self.partnerRings.removeAll()
        self.wildcardRing = nil
    }

    // MARK: - Reload

    /// Applies a new configuration: exports at once (open connections keep going),
    /// import listeners added/removed/changed, rings for new peers.
    func reload(_ newConfig: GatewayConfig) -> EventLoopFuture<Void> {
        guard newConfig.link == self.config.link else {
            self.logger.error("reload: the link settings (emulator, port, ring_size) need a restart; keeping the running configuration")
            return self.eventLoop.makeSucceededVoidFuture()
        }
        let old = self.config
        self.config = newConfig
        for peer in self.peers.values { peer.configuredInFlight = newConfig.peerInFlight }
        for (name, listener) in self.listeners where !newConfig.imports.contains(listener.importConfig) {
            listener.channel.close(promise: nil)
            self.listeners[name] = nil
            self.logger.info("import removed", metadata: ["mapping": "\(name)"])
        }
        let added = newConfig.imports.filter { importConfig in !self.listeners.values.contains { $0.importConfig == importConfig } }
        for domain in newConfig.partnerDomains.subtracting(old.partnerDomains) { self.registerRing(for: domain) }
        if newConfig.wantsWildcardRing, self.wildcardRing == nil { self.registerWildcardRing() }
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

    // MARK: - Peers

    private func peer(_ domain: DomainID) -> PeerLink {
        if let peer = self.peers[domain] { return peer }
        let peer = PeerLink(domain: domain, link: self.link, gatewayPort: self.config.link.port, core: self)
        peer.configuredInFlight = self.config.peerInFlight
        self.peers[domain] = peer
        return peer
    }

    /// Sending to a peer failed for good: every connection with it ends.
    func peerFailed(_ domain: DomainID, error: any Error) {
        let errno = (error as? HMXError)?.errno
        let outcome: GatewayMetrics.Outcome
        switch errno {
        case .ESRCH?: outcome = .peerNotRunning
        case .ECONNREFUSED?: outcome = .noRing
        case .EACCES?, .EPERM?: outcome = .deniedByHypervisor
        default: outcome = .peerLost
        }
        let affected = self.connections.values.filter { $0.peer.domain == domain }
        self.logger.warning(
            "cannot send to peer; ending its connections",
            metadata: [
                "peer": "\(self.config.name(of: domain))", "error": "\(error)", "reason": "\(outcome.rawValue)",
                "connections": "\(affected.count)",
            ]
        )
        for connection in affected {
            // Connections still opening never reached the peer: they count as refused.
            connection.terminate(outcome, resetReason: nil)
        }
        if let peer = self.peers[domain] {
            peer.discardQueue()
            // Its next message, from this run or a new one, starts the numbering again.
            peer.order.reset()
            if errno == .ESRCH {
                // The peer domain is gone, and with it our partner ring for it.
                peer.hasRing = false
                self.partnerRings[domain] = nil
            } else if errno != .EACCES, errno != .EPERM {
                // The peer is silent or has no ring for us: its domain may have been
                // destroyed and started again, taking our partner ring for it along.
                self.checkRing(for: peer)
            }
        }
    }

    /// Makes sure our partner ring for `peer` still exists: Argo destroys the rings
    /// that name a destroyed domain as partner, and a peer domain that is destroyed and
    /// started again between two of our sends leaves no other trace. Registering with
    /// FAIL_EXIST changes nothing if the ring is there (EEXIST) and restores it if not.
    /// At most once a second per peer.
    private func checkRing(for peer: PeerLink) {
        let now = NIODeadline.now()
        guard peer.hasRing, self.config.partnerDomains.contains(peer.domain), now - peer.lastRingCheck >= .seconds(1) else { return }
        peer.lastRingCheck = now
        let domain = peer.domain
        self.link.registerRing(port: self.config.link.port, partner: domain, length: self.config.link.ringSize, failIfExists: true)
            .assumeIsolated().whenComplete { result in
                switch result {
                case .success(let ring):
                    self.partnerRings[domain] = ring
                    peer.hasRing = true
                    self.resetOpensSentWithoutRing(to: peer)
                    self.logger.warning(
                        "our ring for the peer was gone (its domain was destroyed); registered it again",
                        metadata: ["peer": "\(self.config.name(of: domain))"]
                    )
                    self.onEvent()
                case .failure(let error as HMXError) where error.errno == .EEXIST:
                    break
                case .failure(let error as HMXError) where error.errno == .ESRCH:
                    peer.hasRing = false
                    self.partnerRings[domain] = nil
                case .failure(let error as HMXError) where error.code == .linkClosed:
                    // The hypervisor link is gone; the gateway stops and says so.
                    break
                case .failure(let error):
                    self.logger.error(
                        "cannot check the ring for a peer",
                        metadata: ["peer": "\(self.config.name(of: domain))", "error": "\(error)"]
                    )
                }
            }
    }

    /// Periodic work: keepalive pings, dead-peer detection, ring re-registration,
    /// idle timeouts.
    private func tick() {
        let now = NIODeadline.now()
        for (domain, peer) in self.peers {
            if !peer.hasRing, self.config.partnerDomains.contains(domain) { self.registerRing(for: domain) }
            if peer.hasRing { self.refreshPeerSizeIfUnknown(peer, now: now) }
            guard peer.connectionCount > 0 else {
                peer.lastHeard = now
                continue
            }
            if now - peer.lastHeard > Self.silenceBeforeRingCheck {
                // Pinged, but no answer for a while: perhaps the peer's answers cannot
                // reach us because our ring for it went with its previous run.
                self.checkRing(for: peer)
            }
            if now - peer.lastHeard > Self.peerTimeout {
                self.peerFailed(domain, error: HMXError(code: .linkClosed, message: "no answer to keepalive pings"))
                continue
            }
            self.nextNonce &+= 1
            peer.enqueue(.ping(instance: self.instance, nonce: self.nextNonce))
        }
        for connection in self.connections.values {
            if let idle = connection.idleTimeout, now - connection.lastActivity > idle {
                connection.logger.info("idle timeout")
                connection.terminate(.idleTimeout, resetReason: .idleTimeout)
            } else if connection.state.phase == .opening, let deadline = connection.openDeadline, now > deadline {
                connection.logger.warning("no answer from the peer to the connection's OPEN; resetting it")
                connection.terminate(.peerLost, resetReason: .linkFailure)
            }
        }
    }

    // MARK: - Connections

    /// A local client connected to an import's listener.
    func accepted(_ channel: any Channel, for importConfig: GatewayConfig.Import) -> StreamConnection? {
        var logger = self.logger
        logger[metadataKey: "mapping"] = "\(importConfig.name)"
        logger[metadataKey: "peer"] = "\(self.config.name(of: importConfig.peer))"
        let count = self.countsByMapping["import:\(importConfig.name)", default: 0]
        guard !self.isShuttingDown, count < importConfig.maxConnections else {
            let outcome: GatewayMetrics.Outcome = self.isShuttingDown ? .shuttingDown : .limitReached
            logger.warning("connection refused", metadata: ["reason": "\(outcome.rawValue)"])
            self.metrics.count(outcome, imported: true)
            channel.close(promise: nil)
            return nil
        }
        let peer = self.peer(importConfig.peer)
        let id = self.allocateID(for: peer.domain)
        let key = StreamFrame.ConnectionKey(id: id, openedLocally: true)
        logger[metadataKey: "connection"] = "\(key)"
        let connection = StreamConnection(
            key: key,
            peer: peer,
            role: .imported(name: importConfig.name),
            state: .opening(window: self.config.window, maximumWindow: self.config.effectiveWindowMax),
            core: self,
            logger: logger,
            idleTimeout: importConfig.idleTimeoutMilliseconds > 0 ? .milliseconds(importConfig.idleTimeoutMilliseconds) : nil
        )
        connection.attach(channel)
        connection.openDeadline = .now() + .milliseconds(importConfig.openTimeoutMilliseconds)
        connection.openedWithoutRing = !peer.hasRing
        self.add(connection, mapping: "import:\(importConfig.name)")
        peer.enqueue(
            .open(id: id, servicePort: importConfig.port, initialCredit: UInt32(self.config.window), instance: self.instance)
        )
        logger.debug("connection opening")
        return connection
    }

    private func allocateID(for domain: DomainID) -> UInt32 {
        var id = self.nextLocalID[domain, default: 1]
        while self.connections[ConnectionID(peer: domain, key: .init(id: id, openedLocally: true))] != nil || id == 0 {
            id &+= 1
        }
        self.nextLocalID[domain] = id &+ 1
        return id
    }

    private func add(_ connection: StreamConnection, mapping: String) {
        self.connections[ConnectionID(peer: connection.peer.domain, key: connection.key)] = connection
        self.countsByMapping[mapping, default: 0] += 1
        connection.peer.connectionCount += 1
        self.metrics.activeConnections.set(self.connections.count)
    }

    func remove(_ connection: StreamConnection) {
        let id = ConnectionID(peer: connection.peer.domain, key: connection.key)
        guard self.connections[id] === connection else { return }
        self.connections[id] = nil
        let mapping = connection.role.isImport ? "import:\(connection.role.mapping)" : "export:\(connection.role.mapping)"
        self.countsByMapping[mapping, default: 1] -= 1
        connection.peer.connectionCount -= 1
        self.metrics.activeConnections.set(self.connections.count)
        if connection.windowGrowth > 0 {
            self.windowPoolInUse -= connection.windowGrowth
            self.metrics.windowPoolInUse.set(self.windowPoolInUse)
        }
    }

    /// What the window pool still has for connections whose window should grow.
    var windowPoolFree: Int { max(0, self.config.windowPool - self.windowPoolInUse) }

    func windowGrew(by bytes: Int) {
        self.windowPoolInUse += bytes
        self.metrics.windowGrowths.increment()
        self.metrics.windowPoolInUse.set(self.windowPoolInUse)
    }

    /// Our ring for `peer` exists now. Connections whose OPEN went out before it did are
    /// still waiting for an answer that could not reach us (the peer's ACCEPT failed
    /// with ECONNREFUSED): reset them, so their clients can try again at once.
    private func resetOpensSentWithoutRing(to peer: PeerLink) {
        let stranded = self.connections.values.filter { $0.peer === peer && $0.openedWithoutRing && $0.state.phase == .opening }
        for connection in stranded {
            connection.logger.info("connection opened before our ring for the peer existed; its answer could not reach us")
            connection.terminate(.noRing, resetReason: .linkFailure)
        }
    }

    func markNeedsFlush(_ connection: StreamConnection) {
        self.needsFlush.append(connection)
    }

    // MARK: - Receiving

    /// VIRQ: drain every ring, dispatch the frames, wake waiting senders, retry
    /// blocked sends.
    func onEvent() {
        var drained = 0
        var mayHaveBlockedSender = false
        var messages: [(DomainID, ByteBuffer)] = []
        let rings = Array(self.partnerRings.values) + (self.wildcardRing.map { [$0] } ?? [])
        for ring in rings {
            // A peer gateway's message is at most the packing limit: if at least that
            // much (plus header and slot) was free, nobody can be waiting for space, and
            // the notify hypercall can be saved. Other senders (wildcard rings) may send
            // up to the ring's maximum.
            //
            // A sender that found the ring full (EAGAIN) cannot add to it until woken,
            // so the next look at the ring after its EAGAIN sees it at least that full:
            // looking before every message (and before the first) never misses one.
            let largest =
                ring.partner == .any ? Int(ring.maximumMessageSize) : PeerLink.packingLimit(ringMaximumMessageSize: Int(ring.maximumMessageSize))
            let threshold = Int(ring.length) - largest - 32
            if Int(ring.usedBytes) >= threshold { mayHaveBlockedSender = true }
            do {
                drained += try ring.receive { message in
                    if Int(ring.usedBytes) >= threshold { mayHaveBlockedSender = true }
                    guard message.header.messageType == StreamFrame.messageType else {
                        self.metrics.malformedMessages.increment()
                        return
                    }
                    var buffer = ByteBufferAllocator().buffer(capacity: message.payloadLength)
                    buffer.writeBytes(message.first)
                    buffer.writeBytes(message.second)
                    messages.append((DomainID(message.header.source.domain), buffer))
                }
            } catch {
                self.logger.error("a ring was corrupt and has been flushed", metadata: ["error": "\(error)"])
            }
        }
        for (source, buffer) in messages {
            self.metrics.messagesReceived.increment()
            self.dispatch(buffer, from: source)
        }
        if drained > 0, mayHaveBlockedSender {
            // Only the receiver's notify wakes senders that found our ring full.
            _ = self.link.notify([])
        }
        for peer in self.peers.values { peer.retryIfWaiting() }
        let toFlush = self.needsFlush
        self.needsFlush.removeAll(keepingCapacity: true)
        for connection in toFlush { connection.flush() }
    }

    /// A message from a peer's gateway: its SEQUENCE frame puts it in order; the
    /// messages now in order are handled frame by frame.
    private func dispatch(_ message: ByteBuffer, from source: DomainID) {
        var buffer = message
        let peer = self.peer(source)
        let now = NIODeadline.now()
        peer.lastHeard = now
        // A message from the peer's gateway: its ring for us most likely exists now.
        self.refreshPeerSizeIfUnknown(peer, now: now)
        let delivery: MessageOrder.Delivery
        do {
            guard case .sequence(let number, let base, let instance) = try StreamFrame.parse(&buffer) else {
                throw MalformedMessage.noSequenceFirst
            }
            delivery = try peer.order.receive(number: number, base: base, instance: instance, message: buffer)
        } catch {
            self.malformed(from: peer, error)
            return
        }
        if delivery.messages.isEmpty { self.metrics.outOfOrder.increment() }
        if delivery.peerRestarted { self.peerRestarted(peer) }
        for message in delivery.messages {
            guard self.handleFrames(of: message, from: peer) else { return }
        }
    }

    private enum MalformedMessage: Error, CustomStringConvertible {
        case noSequenceFirst
        case sequenceInside

        var description: String {
            switch self {
            case .noSequenceFirst: "the message does not start with SEQUENCE"
            case .sequenceInside: "SEQUENCE after the start of a message"
            }
        }
    }

    /// - Returns: false if the message was malformed (the peer's connections ended).
    private func handleFrames(of message: ByteBuffer, from peer: PeerLink) -> Bool {
        var buffer = message
        while true {
            do {
                guard let frame = try StreamFrame.parse(&buffer) else { return true }
                if case .sequence = frame { throw MalformedMessage.sequenceInside }
                self.handle(frame, from: peer)
            } catch {
                self.malformed(from: peer, error)
                return false
            }
        }
    }

    /// A broken or hostile peer: every connection with it ends, and its message
    /// numbering starts again with its next message.
    private func malformed(from peer: PeerLink, _ error: any Error) {
        self.metrics.malformedMessages.increment()
        self.logger.warning(
            "malformed message from peer; its connections are reset",
            metadata: ["peer": "\(self.config.name(of: peer.domain))", "error": "\(error)"]
        )
        peer.order.reset()
        for connection in self.connections.values where connection.peer === peer {
            connection.terminate(.protocolError, resetReason: .protocolViolation)
        }
    }

    private func handle(_ frame: StreamFrame, from peer: PeerLink) {
        switch frame {
        case .open(let id, let servicePort, let credit, _, let version):
            self.handleOpen(peer: peer, id: id, servicePort: servicePort, credit: credit, version: version)
        case .accept(let key, let credit, _):
            self.connection(peer, key, frameName: "ACCEPT")?.peerAccepted(credit: credit)
        case .refuse(let key, let reason):
            self.connection(peer, key, frameName: "REFUSE")?.peerRefused(reason)
        case .data(let key, let payload):
            self.connection(peer, key, frameName: "DATA")?.peerData(payload)
        case .credit(let key, let increment):
            self.connection(peer, key, frameName: "CREDIT")?.peerCredit(increment)
        case .fin(let key):
            self.connection(peer, key, frameName: "FIN")?.peerFin()
        case .reset(let key, let reason):
            // Never answer a RESET: that could loop.
            self.connections[ConnectionID(peer: peer.domain, key: key)]?.peerReset(reason)
        case .ping(_, let nonce):
            peer.enqueue(.pong(instance: self.instance, nonce: nonce))
        case .pong:
            // Hearing from the peer (in `dispatch`) is what a PONG is for.
            break
        case .sequence:
            // Only ever first in a message, where `dispatch` takes it.
            break
        }
    }

    /// The connection a frame names, or nil after answering RESET for an unknown one.
    private func connection(_ peer: PeerLink, _ key: StreamFrame.ConnectionKey, frameName: String) -> StreamConnection? {
        if let connection = self.connections[ConnectionID(peer: peer.domain, key: key)] { return connection }
        peer.enqueue(.reset(key: key, reason: .unknownConnection))
        return nil
    }

    /// A message with a new instance id (SEQUENCE) means the peer restarted: its old
    /// connections are gone.
    private func peerRestarted(_ peer: PeerLink) {
        self.logger.warning("peer gateway restarted; resetting its old connections", metadata: ["peer": "\(self.config.name(of: peer.domain))"])
        for connection in self.connections.values where connection.peer === peer {
            connection.terminate(.peerLost, resetReason: nil)
        }
        // Its new ring may have another size.
        peer.isMessageSizeKnown = false
        peer.maximumMessageSize = PeerLink.minimumMessageSize
        self.refreshPeerSize(peer)
    }

    /// OPEN from a peer: check the export, its allow-list and limits, then dial.
    private func handleOpen(peer: PeerLink, id: UInt32, servicePort: UInt32, credit: UInt32, version: UInt16) {
        let key = StreamFrame.ConnectionKey(id: id, openedLocally: false)
        var logger = self.logger
        logger[metadataKey: "peer"] = "\(self.config.name(of: peer.domain))"
        logger[metadataKey: "connection"] = "\(key)"
        logger[metadataKey: "port"] = "\(servicePort)"
        func refuse(_ reason: StreamFrame.RefuseReason, _ outcome: GatewayMetrics.Outcome) {
            logger.warning("connection refused", metadata: ["reason": "\(reason)"])
            self.metrics.count(outcome, imported: false)
            peer.enqueue(.refuse(key: key, reason: reason))
        }
        guard self.connections[ConnectionID(peer: peer.domain, key: key)] == nil else {
            logger.warning("peer reused a live connection id; resetting it")
            self.connections[ConnectionID(peer: peer.domain, key: key)]?.terminate(.protocolError, resetReason: .protocolViolation)
            return
        }
        guard version == StreamFrame.version else { return refuse(.unsupportedVersion, .protocolError) }
        guard !self.isShuttingDown else { return refuse(.shuttingDown, .shuttingDown) }
        guard let export = self.config.exports.first(where: { $0.port == servicePort }) else {
            return refuse(.noSuchService, .noSuchService)
        }
        logger[metadataKey: "mapping"] = "\(export.name)"
        // The source domain is the hypervisor's stamp on the message, never payload.
        guard export.allow.permits(peer.domain) else { return refuse(.deniedByGateway, .deniedByGateway) }
        guard self.countsByMapping["export:\(export.name)", default: 0] < export.maxConnections else {
            return refuse(.limitReached, .limitReached)
        }
        let connection = StreamConnection(
            key: key,
            peer: peer,
            role: .exported(name: export.name),
            state: .dialing(window: self.config.window, maximumWindow: self.config.effectiveWindowMax, peerCredit: credit),
            core: self,
            logger: logger,
            idleTimeout: nil
        )
        self.add(connection, mapping: "export:\(export.name)")
        self.dial(export, for: connection)
    }

    private func dial(_ export: GatewayConfig.Export, for connection: StreamConnection) {
        let bootstrap = ClientBootstrap(group: self.eventLoop)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.maxMessagesPerRead, value: 1)
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16384, maximum: 262144))
            .connectTimeout(.milliseconds(export.connectTimeoutMilliseconds))
        let bound = NIOLoopBound(connection, eventLoop: self.eventLoop)
        let configured = bootstrap.channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(StreamGlueHandler(connection: bound.value))
            }
        }
        let future: EventLoopFuture<any Channel>
        switch export.target {
        case .tcp(let host, let port): future = configured.connect(host: host, port: port)
        case .unix(let path): future = configured.connect(unixDomainSocketPath: path)
        case .vsock(let cid, let port): future = configured.connect(to: VsockAddress(cid: .init(rawValue: cid), port: .init(rawValue: port)))
        }
        future.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let channel):
                guard connection.state.phase == .dialing else {
                    // The peer reset the connection while we were dialling.
                    channel.close(promise: nil)
                    return
                }
                connection.attach(channel)
                if export.proxyProtocol == .v2 {
                    channel.write(ProxyHeaderBuilder.header(for: connection.peer.domain, name: self.config.peers.first { $0.value == connection.peer.domain }?.key, channel: channel, connection: connection.key.id), promise: nil)
                }
                _ = connection.state.dialSucceeded()
                connection.peer.enqueue(.accept(key: connection.key, initialCredit: UInt32(self.config.window), instance: self.instance))
                connection.countOpened()
                connection.logger.debug("connection accepted")
                connection.requestReadIfPossible()
            case .failure(let error):
                let timedOut = error is ChannelError && (error as? ChannelError).map { if case .connectTimeout = $0 { true } else { false } } ?? false
                let reason: StreamFrame.RefuseReason = timedOut ? .targetTimedOut : .targetRefused
                connection.logger.warning("connection refused", metadata: ["reason": "\(reason)", "target": "\(export.target)", "error": "\(error)"])
                connection.state.dialFailed()
                connection.peer.enqueue(.refuse(key: connection.key, reason: reason))
                connection.finish(timedOut ? .targetTimedOut : .targetRefused)
            }
        }
    }
}

@available(*, unavailable)
extension GatewayCore: Sendable {}
