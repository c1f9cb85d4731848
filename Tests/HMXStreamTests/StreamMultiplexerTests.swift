// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import NIOCore
import Testing

@Suite("Stream multiplexer: dispatch, admission, malformed peers, restarts, fair rounds")
struct StreamMultiplexerTests {
    static let now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    static let alpha = DomainID(1)
    static let mallory = DomainID(3)

    static func multiplexer() -> StreamMultiplexer {
        StreamMultiplexer(
            configuration: .init(window: 1000, maximumWindow: 1000, windowPool: 0, framesPerRound: 16),
            instance: 42
        )
    }

    /// A message from a peer: SEQUENCE, then `frames`.
    static func message(_ number: UInt32, instance: UInt64 = 7, _ frames: [StreamFrame]) -> ByteBuffer {
        var buffer = ByteBuffer()
        StreamFrame.sequence(number: number, base: number, instance: instance).encode(into: &buffer)
        for frame in frames { frame.encode(into: &buffer) }
        return buffer
    }

    static func actions(_ multiplexer: inout StreamMultiplexer) -> [StreamAction] {
        var actions: [StreamAction] = []
        multiplexer.swapActions(&actions)
        return actions
    }

    /// The frames queued for `domain` (SEQUENCE frames left out), keys as we name them
    /// (on the wire, the flag says who opened the connection from the sender's side).
    static func sent(_ multiplexer: inout StreamMultiplexer, to domain: DomainID) throws -> [StreamFrame] {
        var frames: [StreamFrame] = []
        while let message = multiplexer.nextMessage(to: domain, now: Self.now) {
            var buffer = ByteBuffer()
            for iovec in message.iovecs { buffer.writeImmutableBuffer(iovec) }
            while let frame = try StreamFrame.parse(&buffer) {
                if case .sequence = frame { continue }
                frames.append(frame.turnedAround)
            }
            multiplexer.sendCompleted(to: domain, number: message.number, .delivered, now: Self.now)
        }
        return frames
    }

    static func receive(_ multiplexer: inout StreamMultiplexer, _ buffer: ByteBuffer, from domain: DomainID) {
        multiplexer.received(buffer, type: StreamFrame.messageType, from: domain, now: Self.now)
        while multiplexer.hasInboundWork {
            multiplexer.processInbound(now: Self.now)
            multiplexer.startRound()
        }
    }

    @Test(
        "a domain without a ring for us: answers to it are dropped until a send to it succeeds or a tick passes"
    )
    func answersToDomainWithoutRing() throws {
        var mux = Self.multiplexer()
        Self.receive(&mux, Self.message(0, [.ping(instance: 7, nonce: 1)]), from: Self.mallory)
        let next = mux.nextMessage(to: Self.mallory, now: Self.now)
        let pong = try #require(next)
        mux.sendCompleted(to: Self.mallory, number: pong.number, .failed(.ECONNREFUSED), now: Self.now)
        _ = Self.actions(&mux)
        let unknown = StreamFrame.ConnectionKey(id: 9, openedLocally: true)
        Self.receive(
            &mux,
            Self.message(1, [.ping(instance: 7, nonce: 2), .credit(key: unknown, increment: 5)]),
            from: Self.mallory
        )
        #expect(mux.nextMessage(to: Self.mallory, now: Self.now) == nil, "no PONG, no RESET of an unknown connection")
        mux.tick(now: Self.now + .seconds(1))
        _ = Self.actions(&mux)
        Self.receive(&mux, Self.message(2, [.ping(instance: 7, nonce: 3)]), from: Self.mallory)
        #expect(try Self.sent(&mux, to: Self.mallory) == [.pong(instance: 42, nonce: 3)])
    }

    /// The first datagrams of a flow can come before notify has told the size of the
    /// peer's ring (at the start, or after the peer restarted): they wait for it, and
    /// only one that the ring turns out too small for is dropped, and counted.
    @Test("datagrams larger than the provisional message size wait for the peer's ring size")
    func datagramsWaitForTheRingSize() throws {
        var multiplexer = Self.multiplexer()
        let flow = StreamFrame.ConnectionKey(id: 5, openedLocally: true)
        for size in [9000, 10, 20000] {
            #expect(
                multiplexer.sendDatagram(
                    flow,
                    to: Self.alpha,
                    servicePort: 53,
                    ByteBuffer(repeating: 3, count: size),
                    now: Self.now
                ) == nil
            )
        }
        #expect(multiplexer.nextMessage(to: Self.alpha, now: Self.now) == nil, "waits for the size")
        // A ring whose messages take 12,000 bytes: 9,000 and 10 go, 20,000 never can.
        multiplexer.messageSizeQueried(for: Self.alpha, maximumMessageSize: 12000)
        let sent = try Self.sent(&multiplexer, to: Self.alpha)
        #expect(
            sent.map { frame -> Int in
                guard case .datagram(flow, 53, let payload) = frame else { return -1 }
                return payload.readableBytes
            } == [9000, 10]
        )
        #expect(multiplexer.statistics.datagramsLost == 1)
        #expect(multiplexer.statistics.datagramsSent == 3)
    }

    @Test("datagrams: queued in order within a message's size and the queue bound, else dropped and said why")
    func datagrams() throws {
        var multiplexer = Self.multiplexer()
        let flow = StreamFrame.ConnectionKey(id: 5, openedLocally: true)
        // Until notify tells the size of the peer's ring, messages are 4000 bytes: a
        // larger datagram waits for the size (and what comes after it, in order).
        #expect(
            multiplexer.sendDatagram(
                flow,
                to: Self.alpha,
                servicePort: 53,
                ByteBuffer(repeating: 1, count: 4000),
                now: Self.now
            ) == nil
        )
        #expect(multiplexer.nextMessage(to: Self.alpha, now: Self.now) == nil)
        multiplexer.messageSizeQueried(for: Self.alpha, maximumMessageSize: 1 << 20)
        for size in [0, 1, 4000, 65536] {
            #expect(
                multiplexer.sendDatagram(
                    flow,
                    to: Self.alpha,
                    servicePort: 53,
                    ByteBuffer(repeating: UInt8(size % 251), count: size),
                    now: Self.now
                ) == nil
            )
        }
        #expect(
            multiplexer.sendDatagram(
                flow,
                to: Self.alpha,
                servicePort: 53,
                ByteBuffer(repeating: 1, count: 65537),
                now: Self.now
            )
                == .tooLarge
        )
        #expect(multiplexer.statistics.datagramsSent == 5)
        let sent = try Self.sent(&multiplexer, to: Self.alpha)
        #expect(
            sent.map { frame -> Int in
                guard case .datagram(let key, 53, let payload) = frame, key == flow else { return -1 }
                return payload.readableBytes
            } == [4000, 0, 1, 4000, 65536]
        )
        #expect(multiplexer.statistics.datagramsLost == 0)
        // The queue bound: datagrams beyond it are dropped (a flow never holds up others).
        var dropped = 0
        for _ in 0..<200 {
            if multiplexer.sendDatagram(
                flow,
                to: Self.alpha,
                servicePort: 53,
                ByteBuffer(repeating: 2, count: 60000),
                now: Self.now
            )
                == .queueFull
            {
                dropped += 1
            }
        }
        #expect(dropped > 0 && dropped < 200, "\(dropped)")
        // From the peer: datagrams and closes go to the owner.
        _ = Self.actions(&multiplexer)
        Self.receive(
            &multiplexer,
            Self.message(
                0,
                [
                    .datagram(
                        // As the peer names them: it opened flow 8; flow 5 is ours.
                        key: .init(id: 8, openedLocally: true),
                        servicePort: 53,
                        payload: ByteBuffer(string: "q")
                    ),
                    .datagramClose(key: .init(id: 5, openedLocally: false), reason: .noSuchService),
                ]
            ),
            from: Self.alpha
        )
        let actions = Self.actions(&multiplexer).filter {
            if case .datagram = $0 { return true }
            if case .datagramClosed = $0 { return true }
            return false
        }
        #expect(
            actions == [
                // The peer opened flow 8; flow 5 is ours.
                .datagram(
                    ConnectionID(peer: Self.alpha, key: .init(id: 8, openedLocally: false)),
                    servicePort: 53,
                    ByteBuffer(string: "q")
                ),
                .datagramClosed(ConnectionID(peer: Self.alpha, key: .init(id: 5, openedLocally: true)), .noSuchService),
            ]
        )
    }

    @Test("an OPEN asks the owner; a refusal answers REFUSE and forgets the connection")
    func admission() throws {
        var mux = Self.multiplexer()
        Self.receive(
            &mux,
            Self.message(0, [.open(id: 3, servicePort: 80, initialCredit: 500, instance: 7)]),
            from: Self.alpha
        )
        let id = ConnectionID(peer: Self.alpha, key: .init(id: 3, openedLocally: false))
        #expect(Self.actions(&mux).contains(.incomingOpen(id, servicePort: 80)))
        #expect(mux.connections[id]?.phase == .dialing)
        mux.refuse(id, .deniedByGateway)
        #expect(Self.actions(&mux) == [.ended(id, .refusedHere(.deniedByGateway)), .removed(id)])
        #expect(try Self.sent(&mux, to: Self.alpha) == [.refuse(key: id.key, reason: .deniedByGateway)])
        #expect(mux.activeConnectionCount == 0)
    }

    @Test("OPENs of another version, or while shutting down, are refused at once")
    func protocolRefusals() throws {
        var mux = Self.multiplexer()
        Self.receive(
            &mux,
            Self.message(0, [.open(id: 1, servicePort: 80, initialCredit: 1, instance: 7, version: 1)]),
            from: Self.alpha
        )
        mux.stopAccepting()
        Self.receive(
            &mux,
            Self.message(1, [.open(id: 2, servicePort: 80, initialCredit: 1, instance: 7)]),
            from: Self.alpha
        )
        #expect(
            try Self.sent(&mux, to: Self.alpha) == [
                .refuse(key: .init(id: 1, openedLocally: false), reason: .unsupportedVersion),
                .refuse(key: .init(id: 2, openedLocally: false), reason: .shuttingDown),
            ]
        )
    }

    @Test("frames for unknown connections are answered with RESET, but a RESET never is; PING gets PONG")
    func unknownConnections() throws {
        var mux = Self.multiplexer()
        let key = StreamFrame.ConnectionKey(id: 9, openedLocally: true)
        Self.receive(
            &mux,
            Self.message(
                0,
                [
                    .credit(key: key, increment: 1), .reset(key: key, reason: .applicationReset),
                    .ping(instance: 7, nonce: 5),
                ]
            ),
            from: Self.alpha
        )
        // The peer's key (its connection L9) is R9 here.
        let ours = StreamFrame.ConnectionKey(id: 9, openedLocally: false)
        #expect(
            try Self.sent(&mux, to: Self.alpha) == [
                .reset(key: ours, reason: .unknownConnection), .pong(instance: 42, nonce: 5),
            ]
        )
    }

    @Test("a malformed message ends that peer's connections only")
    func malformed() throws {
        var mux = Self.multiplexer()
        let ours = mux.open(to: Self.alpha, servicePort: 80, idleTimeout: nil, openTimeout: nil, now: Self.now)
        let theirs = mux.open(to: Self.mallory, servicePort: 80, idleTimeout: nil, openTimeout: nil, now: Self.now)
        _ = Self.actions(&mux)
        var garbage = Self.message(0, [])
        garbage.writeBytes([0xFF, 0, 0, 0])
        Self.receive(&mux, garbage, from: Self.mallory)
        let actions = Self.actions(&mux)
        #expect(actions.contains(.notice(.malformed(Self.mallory, .frame(.truncatedHeader)))))
        #expect(actions.contains(.removed(theirs)))
        #expect(mux.connections[ours] != nil)
        #expect(mux.statistics.malformedMessages == 1)
    }

    @Test("a new instance id ends the connections of the peer's previous run, before its new frames")
    func restart() {
        var mux = Self.multiplexer()
        Self.receive(
            &mux,
            Self.message(0, instance: 7, [.open(id: 1, servicePort: 80, initialCredit: 1, instance: 7)]),
            from: Self.alpha
        )
        let old = ConnectionID(peer: Self.alpha, key: .init(id: 1, openedLocally: false))
        mux.dialSucceeded(old)
        _ = Self.actions(&mux)
        // The new run reuses id 1 at once.
        Self.receive(
            &mux,
            Self.message(0, instance: 8, [.open(id: 1, servicePort: 80, initialCredit: 1, instance: 8)]),
            from: Self.alpha
        )
        let actions = Self.actions(&mux)
        #expect(actions.contains(.notice(.peerRestarted(Self.alpha, connections: 1))))
        let removed = actions.firstIndex(of: .removed(old))
        let reopened = actions.firstIndex(of: .incomingOpen(old, servicePort: 80))
        #expect(removed != nil && reopened != nil && removed! < reopened!)
        #expect(mux.connections[old]?.peerInstance == 8)
    }

    @Test(
        "a flooding peer gets its budget per round, whatever the turns; another peer's frames are handled in the first"
    )
    func fairRounds() {
        var mux = Self.multiplexer()
        for number in 0..<8 {
            let pings = (0..<200).map { StreamFrame.ping(instance: 7, nonce: UInt64($0)) }
            mux.received(
                Self.message(UInt32(number), pings),
                type: StreamFrame.messageType,
                from: Self.mallory,
                now: Self.now
            )
        }
        mux.received(
            Self.message(0, [.open(id: 1, servicePort: 80, initialCredit: 1, instance: 7)]),
            type: StreamFrame.messageType,
            from: Self.alpha,
            now: Self.now
        )
        #expect(mux.isInboxFull(of: Self.mallory) == false)
        mux.processInbound(now: Self.now)
        #expect(
            Self.actions(&mux).contains(
                .incomingOpen(ConnectionID(peer: Self.alpha, key: .init(id: 1, openedLocally: false)), servicePort: 80)
            )
        )
        #expect(mux.load(of: Self.mallory)?.framesHandled == 16)
        // More turns in the same round (link events in one loop iteration): mallory's
        // budget is spent; alpha's next frames are still handled.
        mux.received(
            Self.message(1, [.open(id: 2, servicePort: 80, initialCredit: 1, instance: 7)]),
            type: StreamFrame.messageType,
            from: Self.alpha,
            now: Self.now
        )
        mux.processInbound(now: Self.now)
        mux.processInbound(now: Self.now)
        #expect(mux.load(of: Self.mallory)?.framesHandled == 16)
        #expect(
            Self.actions(&mux).contains(
                .incomingOpen(ConnectionID(peer: Self.alpha, key: .init(id: 2, openedLocally: false)), servicePort: 80)
            )
        )
        #expect(mux.hasInboundWork, "mallory's 1600 PINGs take 100 rounds of 16")
        var rounds = 1
        while mux.hasInboundWork {
            mux.startRound()
            mux.processInbound(now: Self.now)
            rounds += 1
            #expect(mux.load(of: Self.mallory)?.framesHandled == min(16 * rounds, 1600))
        }
        #expect(rounds == 100)
    }
}

extension StreamFrame {
    /// The frame with its key as the sender names it.
    fileprivate var turnedAround: StreamFrame {
        func turn(_ key: ConnectionKey) -> ConnectionKey {
            ConnectionKey(id: key.id, openedLocally: !key.openedLocally)
        }
        switch self {
        case .accept(let key, let credit, let instance):
            return .accept(key: turn(key), initialCredit: credit, instance: instance)
        case .refuse(let key, let reason): return .refuse(key: turn(key), reason: reason)
        case .data(let key, let payload): return .data(key: turn(key), payload: payload)
        case .credit(let key, let increment): return .credit(key: turn(key), increment: increment)
        case .fin(let key): return .fin(key: turn(key))
        case .reset(let key, let reason): return .reset(key: turn(key), reason: reason)
        case .datagram(let key, let port, let payload):
            return .datagram(key: turn(key), servicePort: port, payload: payload)
        case .datagramClose(let key, let reason): return .datagramClose(key: turn(key), reason: reason)
        case .open, .ping, .pong, .sequence: return self
        }
    }
}
