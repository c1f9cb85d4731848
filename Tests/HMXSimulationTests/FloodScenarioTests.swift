// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import HMXTestSupport
import NIOCore
import NIOEmbedded
import Testing

/// A third domain floods beta's wildcard ring while alpha streams to beta's export.
/// Each step of the scenario is one iteration of every gateway's event loop: the I/O
/// that is ready (link events, the driver's continuations of left-over work, the
/// applications' sockets), then the loop's tasks. The flood may cost beta only
/// mallory's share of each iteration: alpha's stream keeps at least half the rate (in
/// iterations) it has without the flood, and what beta keeps for mallory stays bounded.
@Suite("flooding peer")
struct FloodScenarioTests {
    static let port = HMXPort(4747)
    static let exportedPort: UInt32 = 7
    static let mallory = DomainID(3)
    static let streamBytes = 4 << 20

    enum Flood: CustomStringConvertible {
        case none
        /// OPENs for a port nothing exports (each one refused).
        case opens
        /// PINGs (each one answered).
        case pings
        /// Random bytes in the stream protocol's message type.
        case garbage

        var description: String {
            switch self {
            case .none: "none"
            case .opens: "OPEN"
            case .pings: "PING"
            case .garbage: "garbage"
            }
        }
    }

    /// A gateway's owner: exports port 7, refuses every other port, and counts what it
    /// is told.
    final class Exporter: StreamDriverDelegate {
        var driver: StreamDriver!
        var pendingDials: [ConnectionID] = []
        var ended: [ConnectionID: ConnectionEnd] = [:]
        var refusedOpens = 0
        var notices: [String: Int] = [:]

        func admit(_ id: ConnectionID, servicePort: UInt32) -> StreamDriver.Admission {
            guard servicePort == FloodScenarioTests.exportedPort else { return .refuse(.noSuchService) }
            self.pendingDials.append(id)
            return .dial()
        }

        func perform(_ action: StreamAction) {
            switch action {
            case .ended(let id, let end):
                self.ended[id] = end
                if case .refusedHere = end { self.refusedOpens += 1 }
            case .notice(let notice):
                let kind = "\(notice)".prefix { $0 != "(" }
                self.notices[String(kind), default: 0] += 1
            case .openRefused:
                self.refusedOpens += 1
            default:
                break
            }
        }

        func turnEnded(_ statistics: StreamStatistics) {}
    }

    /// The stream's byte at `offset`: a pattern of prime period, so a byte lost,
    /// doubled or moved shows.
    static func byte(at offset: Int) -> UInt8 { Self.pattern[offset % 65_521] }

    static let pattern: [UInt8] = (0..<(65_521 + 65_536)).map {
        UInt8(truncatingIfNeeded: ($0 % 65_521) &* 2_654_435_761 >> 13)
    }

    /// alpha's client: sends ``streamBytes`` when the driver asks, then EOF.
    final class Source: StreamSocket {
        var isReadRequested = false
        var sent = 0
        var isClosedReported = false
        var wasReset = false
        func write(_ bytes: ByteBuffer) {}
        func flush() {}
        func read() { self.isReadRequested = true }
        func shutdownOutput() {}
        func abort() { self.wasReset = true }
    }

    /// beta's server: checks every byte, takes writes one iteration later.
    final class Sink: StreamSocket {
        var received = 0
        var pending: [Int] = []
        var sawEOF = false
        var wasReset = false
        var mismatch: Int?
        func write(_ bytes: ByteBuffer) {
            let start = self.received % 65_521
            let expected = FloodScenarioTests.pattern[start..<(start + bytes.readableBytes)]
            if self.mismatch == nil, !bytes.readableBytesView.elementsEqual(expected) { self.mismatch = self.received }
            self.received += bytes.readableBytes
            self.pending.append(bytes.readableBytes)
        }
        func flush() {}
        func read() {}
        func shutdownOutput() { self.sawEOF = true }
        func abort() { self.wasReset = true }
    }

    /// One run: alpha streams ``streamBytes`` to beta while mallory floods (or not).
    final class Run {
        let loop = EmbeddedEventLoop()
        let hypervisor: InProcessHypervisor
        let alpha: StreamDriver
        let beta: StreamDriver
        let alphaOwner = Exporter()
        let betaOwner = Exporter()
        let mallory: InProcessLink
        let flood: Flood
        var continuations: [() -> Void] = []
        let source = Source()
        let sink = Sink()
        var clientID: ConnectionID!
        var serverID: ConnectionID?
        var malloryNumber: UInt32 = 0
        var malloryMessages = 0
        let floodMessage: ByteBuffer
        /// Largest number of mallory's frames beta handled in one iteration, and the
        /// turns (link events and continuations) that iteration had.
        var busiestIteration = (frames: 0, turns: 0)
        var maximumInbox = 0
        var maximumQueued = 0
        /// Iterations that ended with mallory's messages waiting in beta.
        var backloggedIterations = 0

        init(flood: Flood) throws {
            self.flood = flood
            self.floodMessage = Self.message(flood)
            self.hypervisor = InProcessHypervisor(eventLoop: self.loop, wildcardRingsAllowed: true)
            let configuration = StreamDriver.Configuration(
                port: FloodScenarioTests.port,
                ringSize: 262_144,
                multiplexer: .init(window: 262_144, maximumWindow: 262_144, windowPool: 1 << 20)
            )
            let alphaLink = try self.hypervisor.attach(DomainID(1), name: "alpha", mode: .immediate)
            let betaLink = try self.hypervisor.attach(DomainID(2), name: "beta", mode: .immediate)
            // mallory registers no ring: beta's answers find none (ECONNREFUSED).
            self.mallory = try self.hypervisor.attach(FloodScenarioTests.mallory, name: "mallory", mode: .immediate)
            self.alpha = StreamDriver(link: alphaLink, configuration: configuration, instance: 0xA)
            self.beta = StreamDriver(link: betaLink, configuration: configuration, instance: 0xB)
            for (driver, owner) in [(self.alpha, self.alphaOwner), (self.beta, self.betaOwner)] {
                owner.driver = driver
                driver.delegate = owner
                driver.yieldToIO = { [unowned self] in self.continuations.append($0) }
            }
            _ = self.alpha.start(partners: [DomainID(2)], wildcard: false)
            _ = self.beta.start(partners: [DomainID(1)], wildcard: true)
            self.loop.run()
        }

        /// The largest message beta's wildcard ring takes, full of small frames.
        static func message(_ flood: Flood) -> ByteBuffer {
            var frames = ByteBuffer()
            let room = Int(ArgoABI.maximumPayload(ringLength: 262_144)) - 64
            var count = 0
            while frames.readableBytes < room {
                switch flood {
                case .none, .opens:
                    StreamFrame.open(id: UInt32(count), servicePort: 31_337, initialCredit: 65_536, instance: 0xBAD)
                        .encode(into: &frames)
                case .pings:
                    StreamFrame.ping(instance: 0xBAD, nonce: UInt64(count)).encode(into: &frames)
                case .garbage:
                    frames.writeInteger(UInt64(count) &* 0x9E37_79B9_7F4A_7C15)
                }
                count += 1
            }
            return frames
        }

        deinit {
            self.alpha.stop()
            self.beta.stop()
            try? self.loop.syncShutdownGracefully()
        }

        func open() throws {
            self.clientID = self.alpha.open(
                to: DomainID(2),
                servicePort: FloodScenarioTests.exportedPort,
                idleTimeout: nil,
                openTimeout: .seconds(30)
            )
            self.alpha.attach(self.source, to: self.clientID)
            self.loop.run()
        }

        /// mallory writes its message again if beta's wildcard ring has room.
        func malloryTries() {
            guard self.flood != .none else { return }
            var header = ByteBuffer()
            StreamFrame.sequence(number: self.malloryNumber, base: self.malloryNumber, instance: 0xBAD)
                .encode(into: &header)
            let sent = self.mallory.sendv(
                from: FloodScenarioTests.port,
                to: HMXAddress(domain: DomainID(2), port: FloodScenarioTests.port),
                type: StreamFrame.messageType,
                iovecs: self.flood == .garbage ? [self.floodMessage] : [header, self.floodMessage]
            )
            sent.assumeIsolated().whenSuccess { _ in
                self.malloryNumber &+= 1
                self.malloryMessages += 1
            }
        }

        /// One iteration of every loop. Returns false once the stream ended.
        func iterate() -> Bool {
            let framesBefore = self.beta.load(of: FloodScenarioTests.mallory)?.framesHandled ?? 0
            self.malloryTries()
            // The I/O phase: continuations of left-over work, then the sockets.
            var continuations: [() -> Void] = []
            swap(&continuations, &self.continuations)
            for continuation in continuations { continuation() }
            if self.serverID == nil, let id = self.betaOwner.pendingDials.first {
                self.serverID = id
                self.beta.attach(self.sink, to: id)
                self.beta.dialSucceeded(id)
            }
            if let id = self.serverID {
                for count in self.sink.pending { self.beta.localWriteCompleted(id, count: count) }
                self.sink.pending.removeAll()
            }
            if self.source.isReadRequested, self.source.sent < FloodScenarioTests.streamBytes {
                self.source.isReadRequested = false
                let count = min(65_536, FloodScenarioTests.streamBytes - self.source.sent)
                let start = self.source.sent % 65_521
                let chunk = ByteBuffer(bytes: FloodScenarioTests.pattern[start..<(start + count)])
                self.source.sent += count
                self.alpha.localRead(self.clientID, chunk)
                self.alpha.localReadComplete(self.clientID)
            } else if self.source.sent == FloodScenarioTests.streamBytes, !self.source.isClosedReported {
                self.source.isClosedReported = true
                self.alpha.localInputClosed(self.clientID)
            }
            // The tasks phase.
            self.loop.advanceTime(by: .microseconds(20))
            self.loop.run()
            let frames = (self.beta.load(of: FloodScenarioTests.mallory)?.framesHandled ?? 0) - framesBefore
            if frames > self.busiestIteration.frames { self.busiestIteration = (frames, continuations.count) }
            if let load = self.beta.load(of: FloodScenarioTests.mallory) {
                self.maximumInbox = max(self.maximumInbox, load.inboxBytes)
                self.maximumQueued = max(self.maximumQueued, load.queuedFrames)
                if load.inboxBytes > 0 { self.backloggedIterations += 1 }
            }
            return !(self.sink.sawEOF || self.sink.wasReset || self.source.wasReset)
        }

        /// Iterations until the stream ended.
        func stream(limit: Int) throws -> Int {
            try self.open()
            var iterations = 0
            while iterations < limit, self.iterate() { iterations += 1 }
            return iterations
        }
    }

    @Test(
        "a flooding peer gets one budget per loop iteration: what beta keeps for it stays bounded, alpha's stream goes on",
        arguments: [
            Flood.opens, .pings, .garbage,
        ]
    )
    func floodCostsOnlyItsShare(_ flood: Flood) throws {
        let quiet = try Run(flood: .none)
        let quietIterations = try quiet.stream(limit: 100_000)
        #expect(quiet.sink.sawEOF && quiet.sink.received == Self.streamBytes && quiet.sink.mismatch == nil)

        let flooded = try Run(flood: flood)
        let floodedIterations = try flooded.stream(limit: 100_000)
        let summary =
            "\(flood) flood: \(floodedIterations) iterations (quiet \(quietIterations)); mallory sent \(flooded.malloryMessages) messages; busiest iteration \(flooded.busiestIteration); inbox max \(flooded.maximumInbox); queued max \(flooded.maximumQueued); backlogged \(flooded.backloggedIterations)"
        // What beta keeps for mallory stays bounded: its unhandled messages (beta
        // stops taking them from the ring), the answers waiting for it, connections.
        #expect(
            flooded.maximumInbox <= StreamMultiplexer.maximumInboxBytes
                + Int(ArgoABI.maximumPayload(ringLength: 262_144)),
            "\(summary)"
        )
        #expect(flooded.maximumQueued <= PeerSender.maximumQueuedFrames, "\(summary)")
        #expect(!flooded.beta.connections.keys.contains { $0.peer == Self.mallory }, "\(summary)")
        // Per loop iteration, mallory's frames are at most one round's budget for each
        // round the iteration started (the continuation of left-over work), plus the
        // rest of the round before: never one budget per link event.
        let budget = flooded.beta.configuration.multiplexer.framesPerRound
        #expect(flooded.busiestIteration.frames <= budget * (flooded.busiestIteration.turns + 1), "\(summary)")
        #expect(flooded.sink.sawEOF, "the stream ended cleanly: \(summary)")
        #expect(flooded.sink.received == Self.streamBytes && flooded.sink.mismatch == nil)
        if flood != .garbage {
            // The flood lasted: beta had mallory's frames waiting in nearly every iteration.
            #expect(flooded.backloggedIterations * 10 >= floodedIterations * 9, "\(summary)")
        }
        // alpha's frames are handled in every iteration they arrive in, flood or not.
        #expect(floodedIterations <= 2 * quietIterations, "\(summary)")
    }
}
