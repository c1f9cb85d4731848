// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

// MARK: - Executing the multiplexer's actions

extension StreamDriver {
    /// Runs one event on the multiplexer, then executes what it asked for.
    func run(_ event: (inout StreamMultiplexer) -> Void) {
        self.eventLoop.assertInEventLoop()
        event(&self.multiplexer)
        self.executeActions()
        if !self.isExecuting { self.flushSockets() }
        if self.multiplexer.needsPump { self.schedulePump() }
    }

    /// Executes the multiplexer's actions in order. Executing one may produce more
    /// (the delegate calls back, a backend completes at once): they join the queue and
    /// this loop takes them, so no event is handled inside another.
    private func executeActions() {
        guard !self.isExecuting else { return }
        self.isExecuting = true
        defer { self.isExecuting = false }
        while self.multiplexer.hasActions {
            var batch = self.spareActions
            self.multiplexer.swapActions(&batch)
            for action in batch { self.execute(action) }
            batch.removeAll(keepingCapacity: true)
            self.spareActions = batch
        }
    }

    private func execute(_ action: StreamAction) {
        switch action {
        case .incomingOpen(let id, let servicePort, let records, let caller):
            let admission =
                self.delegate?.admit(id, servicePort: servicePort, records: records, caller: caller)
                ?? .refuse(.shuttingDown)
            switch admission {
            case .dial(let idleTimeout?): self.multiplexer.setIdleTimeout(id, idleTimeout)
            case .dial(nil): break
            case .refuse(let reason): self.multiplexer.refuse(id, reason)
            }
        case .registerRing(let domain, let attempt, let check):
            self.registerRing(for: domain, attempt: attempt, check: check)
        case .registerRingLater(let domain, let attempt, let delay):
            let bound = NIOLoopBound(self, eventLoop: self.eventLoop)
            self.eventLoop.scheduleTask(in: delay) {
                bound.value.registerRing(for: domain, attempt: attempt, check: false)
            }
        case .queryMessageSize(let domain):
            self.queryMessageSize(of: domain)
        case .ringLost(let domain):
            self.rings.removePartnerRing(for: domain)
        case .write(let id, let bytes):
            guard let socket = self.sockets[id] else { return }
            socket.write(bytes)
            self.needsFlush.append(socket)
        case .read(let id):
            self.sockets[id]?.read()
        case .shutdownOutput(let id):
            self.sockets[id]?.shutdownOutput()
        case .abort(let id):
            self.sockets[id]?.abort()
        case .removed(let id):
            self.sockets[id] = nil
            self.delegate?.perform(action)
        case .openRefused, .opened, .ended, .notice, .datagram, .datagramClosed:
            self.delegate?.perform(action)
        }
    }

    // MARK: - Link events and turns

    /// VIRQ: data arrived on some ring, or a ring we found full may have room.
    func linkEvent() {
        self.multiplexer.ringsMayHaveRoom()
        self.turn()
    }

    /// One turn: drain the rings, handle each peer's frames within its budget, wake
    /// blocked senders, flush, send.
    func turn() {
        guard !self.isStopped else { return }
        // Asked for while actions execute (a backend that completes at once, as Xen's
        // does): run it after them, or its writes would wait for a later flush.
        guard !self.isExecuting else { return self.scheduleTurn() }
        let now = self.now
        let drain = self.rings.drain(into: &self.multiplexer, now: now)
        self.multiplexer.processInbound(now: now)
        self.executeActions()
        for (ring, error) in drain.corrupt {
            self.delegate?.perform(.notice(.ringCorrupt(ring, error: "\(error)")))
        }
        if drain.messages > 0, drain.needsNotify {
            // Only the receiver's notify wakes senders that found our ring full.
            _ = self.link.notify([])
        }
        self.flushSockets()
        self.delegate?.turnEnded(self.multiplexer.statistics)
        if self.multiplexer.hasInboundWork || drain.leftMessages { self.scheduleFollowUpTurn() }
        self.pump()
    }

    /// Flushes the sockets written to since the last flush (the other side's "read
    /// complete": one flush per turn, not per write).
    func flushSockets() {
        guard !self.needsFlush.isEmpty else { return }
        var written: [any StreamSocket] = []
        swap(&written, &self.needsFlush)
        for socket in written { socket.flush() }
        written.removeAll(keepingCapacity: true)
        if self.needsFlush.isEmpty { self.needsFlush = written }
    }

    /// Work is left over (a peer's inbox, messages left in a ring): a new round of it,
    /// after the event loop has served the I/O that became ready meanwhile (with
    /// ``yieldToIO``, if the owner set it).
    private func scheduleFollowUpTurn() {
        guard !self.isFollowUpScheduled else { return }
        self.isFollowUpScheduled = true
        let next = { [weak self] in
            guard let self else { return }
            self.isFollowUpScheduled = false
            self.multiplexer.startRound()
            self.turn()
        }
        if let yieldToIO = self.yieldToIO {
            yieldToIO(next)
        } else {
            self.eventLoop.assumeIsolated().execute(next)
        }
    }

    private func scheduleTurn() {
        guard !self.isTurnScheduled else { return }
        self.isTurnScheduled = true
        self.eventLoop.assumeIsolated().execute {
            self.isTurnScheduled = false
            self.turn()
        }
    }

    func tick() {
        guard !self.isStopped else { return }
        self.run { $0.tick(now: self.now) }
        self.flushSockets()
        self.delegate?.turnEnded(self.multiplexer.statistics)
    }

    // MARK: - Sending

    /// Sends queued frames at the end of this loop tick, so a burst becomes one message.
    private func schedulePump() {
        guard !self.isPumpScheduled, !self.isPumping else { return }
        self.isPumpScheduled = true
        self.eventLoop.assumeIsolated().execute {
            self.isPumpScheduled = false
            self.pump()
        }
    }

    /// Hands every message that may go now to sendv.
    func pump() {
        guard !self.isPumping else { return }
        self.isPumping = true
        defer { self.isPumping = false }
        while self.multiplexer.needsPump {
            for domain in self.multiplexer.takePeersToPump() {
                // Asked one at a time: a backend whose result comes at once (Xen) may
                // have found the ring full meanwhile.
                while let message = self.multiplexer.nextMessage(to: domain, now: self.now) {
                    self.send(message, to: domain)
                }
                self.multiplexer.pumped(domain)
                self.executeActions()
            }
        }
    }

    /// A tagged send: the tag is the peer's domain and the message's number, and the
    /// result comes back to ``sendCompleted(tag:_:)`` without a future.
    private func send(_ message: PeerSender.Message, to domain: DomainID) {
        self.link.sendv(
            from: self.configuration.port,
            to: HMXAddress(domain: domain, port: self.configuration.port),
            type: StreamFrame.messageType,
            iovecs: message.iovecs,
            resultMayBeLate: message.resultMayBeLate,
            tag: UInt64(domain.rawValue) << 32 | UInt64(message.number),
            resultsTo: self
        )
    }

    // MARK: - Rings

    func registerRing(for domain: DomainID, attempt: Int, check: Bool) {
        guard !self.isStopped else { return }
        let configuration = self.configuration
        self.link.registerRing(
            port: configuration.port,
            partner: domain,
            length: configuration.ringSize,
            failIfExists: check
        )
        .assumeIsolated().whenComplete { result in
            defer {
                if attempt == 0, !check { self.firstAnswers.removeValue(forKey: domain)?.succeed(()) }
            }
            guard !self.isStopped else { return }
            switch result {
            case .success(let ring):
                self.rings.add(ring)
                self.run { $0.ringRegistered(for: domain, check: check, now: self.now) }
                // Messages may have arrived before we looked.
                self.turn()
            case .failure(let error):
                let errno = (error as? HMXError)?.errno
                self.run {
                    $0.ringRegistrationFailed(for: domain, errno: errno, attempt: attempt, check: check, now: self.now)
                }
            }
        }
    }

    private func queryMessageSize(of domain: DomainID) {
        let ring = HMXAddress(domain: domain, port: self.configuration.port)
        self.link.notify([HMXNotifyQuery(ring: ring, spaceRequired: 0)]).assumeIsolated().whenComplete { result in
            var size: Int?
            if case .success(let results) = result, let answer = results.first, answer.flags.contains(.exists) {
                size = Int(answer.maxMessageSize)
            }
            self.run { $0.messageSizeQueried(for: domain, maximumMessageSize: size) }
        }
    }
}

extension StreamDriver: HMXSendResultSink {
    public func sendCompleted(tag: UInt64, _ result: Result<Int, HMXError>) {
        let domain = DomainID(UInt16(truncatingIfNeeded: tag >> 32))
        let number = UInt32(truncatingIfNeeded: tag)
        let outcome: StreamMultiplexer.SendOutcome
        switch result {
        case .success: outcome = .delivered
        case .failure(let error) where error.errno == .EAGAIN: outcome = .ringFull
        case .failure(let error): outcome = .failed(error.errno)
        }
        self.run { $0.sendCompleted(to: domain, number: number, outcome, now: self.now) }
    }
}
