// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore
import Synchronization

/// The Argo behaviours of ARGO.md §1.5 and §2 as executable checks, run against any
/// backend: the emulator in tests, real Xen in the lab. One suite, two backends.
///
/// Each check uses raw hypercalls with arguments crafted in hypercall-safe memory, so
/// error precedence and padding rules are exercised exactly, not through a
/// convenience API that would hide them.
public struct ConformanceSuite: Sendable {
    /// What a check may use.
    public struct World: Sendable {
        /// The domain under test.
        public var primary: any HMXRawHypercalls
        /// A second domain in this process, for checks that need two (the emulator).
        public var peer: (any HMXRawHypercalls)?
        /// A second domain elsewhere (Xen: an agent in another domain). With neither,
        /// the checks that need two domains are skipped, and reported so.
        public var remotePeer: (any ConformancePeer)?
        /// Whether the hypervisor allows wildcard rings (Xen's mac-permissive).
        public var wildcardRingsAllowed: Bool
        /// A domain id that certainly does not exist.
        public var absentDomain: DomainID
        /// Ends the second domain (the emulator: its link closes; Xen: the agent quits
        /// and its domain powers off). The check that uses it runs last and waits for
        /// the hypervisor to report the domain gone. Without it that check is skipped.
        public var destroyPeer: (@Sendable () async throws -> Void)?

        public init(
            primary: any HMXRawHypercalls,
            peer: (any HMXRawHypercalls)?,
            remotePeer: (any ConformancePeer)? = nil,
            wildcardRingsAllowed: Bool,
            absentDomain: DomainID,
            destroyPeer: (@Sendable () async throws -> Void)? = nil
        ) {
            self.primary = primary
            self.peer = peer
            self.remotePeer = remotePeer
            self.wildcardRingsAllowed = wildcardRingsAllowed
            self.absentDomain = absentDomain
            self.destroyPeer = destroyPeer
        }
    }

    public struct Check: Sendable {
        public var name: String
        /// Needs ``World/peer`` or ``World/remotePeer``.
        public var needsPeer: Bool
        /// Needs ``World/destroyPeer`` (and ends the second domain: it runs last).
        public var destroysPeer: Bool
        public var body: @Sendable (CheckContext) async throws -> Void

        init(
            _ name: String,
            needsPeer: Bool = false,
            destroysPeer: Bool = false,
            _ body: @escaping @Sendable (CheckContext) async throws -> Void
        ) {
            self.name = name
            self.needsPeer = needsPeer || destroysPeer
            self.destroysPeer = destroysPeer
            self.body = body
        }
    }

    public enum Outcome: Sendable, Equatable {
        case passed
        case failed(String)
        case notApplicable(String)
    }

    /// A check's verdict.
    public struct CheckFailure: Error, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// Every check, in the order they run; the one that destroys the second domain is
    /// last.
    public static let checks: [Check] =
        RegisterChecks.all + UnregisterChecks.all + SendChecks.all + NotifyChecks.all
        + TwoDomainChecks.all + [PartnerDestroyCheck.check]

    public static var checkNames: [String] { self.checks.map(\.name) }

    /// Runs one check by name. Rings it registered are unregistered afterwards.
    public static func run(_ name: String, in world: World) async -> Outcome {
        guard let check = self.checks.first(where: { $0.name == name }) else { return .failed("no such check") }
        if check.needsPeer, world.peer == nil, world.remotePeer == nil {
            return .notApplicable("needs a second domain")
        }
        if check.destroysPeer, world.destroyPeer == nil {
            return .notApplicable("needs a second domain that may be destroyed")
        }
        let context = CheckContext(world: world)
        do {
            try await check.body(context)
            await context.cleanUp()
            return .passed
        } catch {
            await context.cleanUp()
            return .failed("\(error)")
        }
    }

    /// Runs every check; prints one line each and a closing `N passed, N failed` line.
    /// - Returns: true if nothing failed.
    public static func runAll(in world: World, print: (String) -> Void) async -> Bool {
        var passed = 0
        var failed = 0
        var skipped = 0
        for check in self.checks {
            switch await self.run(check.name, in: world) {
            case .passed:
                passed += 1
                print("PASS \(check.name)")
            case .failed(let why):
                failed += 1
                print("FAIL \(check.name): \(why)")
            case .notApplicable(let why):
                skipped += 1
                print("N/A  \(check.name): \(why)")
            }
        }
        print("conformance: \(passed) passed, \(failed) failed" + (skipped > 0 ? ", \(skipped) skipped" : ""))
        return failed == 0
    }
}

// MARK: - Helpers shared by the checks

/// What one check has: the world, and cleanup of what it allocated and registered.
public final class CheckContext: Sendable {
    public let world: ConformanceSuite.World
    let primary: Raw
    let peer: Raw?
    private let tracker = Tracker()
    /// Rings the check registered in a remote second domain.
    private let remoteRings = Mutex<[(port: UInt32, partner: UInt16)]>([])

    init(world: ConformanceSuite.World) {
        self.world = world
        let tracker = self.tracker
        self.primary = Raw(link: world.primary, tracker: tracker, events: EventWatch(world.primary))
        self.peer = world.peer.map { Raw(link: $0, tracker: tracker, events: EventWatch($0)) }
    }

    /// The second domain, which checks marked `needsPeer` can rely on: in this process,
    /// or the remote one.
    var requirePeer: any ConformancePeer {
        get throws {
            if let remote = self.world.remotePeer { return remote }
            guard let peer = self.peer else { throw ConformanceSuite.CheckFailure("needs a second domain") }
            return peer
        }
    }

    /// Registers a ring in the second domain (which then receives); a remote one is
    /// unregistered by ``cleanUp()`` (an in-process one is tracked like the primary's).
    func registerPeerRing(port: UInt32, partner: UInt16, length: UInt32) async throws -> Int64 {
        let peer = try self.requirePeer
        let result = try await peer.registerRing(port: port, partner: partner, length: length)
        if result == 0, self.world.remotePeer != nil {
            self.remoteRings.withLock { $0.append((port, partner)) }
        }
        return result
    }

    /// Unregisters the check's rings (by their owner), then frees its scratch memory.
    func cleanUp() async {
        if let remote = self.world.remotePeer {
            for (port, partner) in self.remoteRings.withLock({ $0 }) {
                _ = try? await remote.unregisterRing(port: port, partner: partner)
            }
        }
        let (rings, scratch) = self.tracker.take()
        for ring in rings {
            _ = try? await ring.raw.unregister(port: ring.port, partner: ring.partner, track: false)
        }
        let (_, more) = self.tracker.take()
        for item in scratch + more { item.link.releaseScratch(item.scratch) }
        self.world.primary.setEventHandler {}
        self.world.peer?.setEventHandler {}
    }
}

/// Records allocations and registrations of a check (thread-safe).
final class Tracker: Sendable {
    struct RingRecord: Sendable {
        var raw: Raw
        var port: UInt32
        var partner: UInt16
        var memory: HMXScratch
        var length: UInt32
    }
    struct ScratchRecord: Sendable {
        var link: any HMXRawHypercalls
        var scratch: HMXScratch
    }
    private let state = Mutex<([RingRecord], [ScratchRecord])>(([], []))

    func ring(_ record: RingRecord) { self.state.withLock { $0.0.append(record) } }
    func scratch(_ record: ScratchRecord) { self.state.withLock { $0.1.append(record) } }
    /// The ring `domain` registered for `partner` at `port` in this check, if any.
    func ring(of domain: DomainID, port: UInt32, partner: UInt16) -> RingRecord? {
        self.state.withLock { state in
            state.0.last { $0.raw.domain == domain && $0.port == port && $0.partner == partner }
        }
    }
    func take() -> ([RingRecord], [ScratchRecord]) {
        self.state.withLock { state in
            defer { state = ([], []) }
            return state
        }
    }
}

/// Raw-hypercall helpers over a link.
struct Raw: Sendable {
    let link: any HMXRawHypercalls
    let tracker: Tracker
    let events: EventWatch

    var domain: DomainID { self.link.localDomain }

    func call(
        _ command: UInt32,
        _ arg1: UInt64 = 0,
        _ arg2: UInt64 = 0,
        _ arg3: UInt64 = 0,
        _ arg4: UInt64 = 0
    ) async throws -> Int64 {
        try await self.link.rawHypercall(command: command, arg1: arg1, arg2: arg2, arg3: arg3, arg4: arg4).get()
    }

    func scratch(pages: Int = 1) async throws -> HMXScratch {
        let scratch = try await self.link.allocateScratch(pages: pages).get()
        self.tracker.scratch(.init(link: self.link, scratch: scratch))
        return scratch
    }

    /// Registers a ring with raw arguments; returns the hypercall result and the memory.
    func register(
        port: UInt32,
        partner: UInt16,
        length: UInt32,
        flags: UInt64 = 0,
        pad: UInt16 = 0,
        npages: UInt64? = nil
    ) async throws -> (result: Int64, ring: HMXScratch) {
        let pages = Int(ArgoABI.pagesForRing(length: max(length, 48)))
        let ring = try await self.scratch(pages: pages)
        let args = try await self.scratch(pages: 1 + (pages * 8) / ArgoABI.pageSize)
        ArgoRegisterRing(port: port, partner: partner, length: length, pad: pad).store(to: args.pointer)
        for (index, gfn) in self.link.frameNumbers(of: ring).enumerated() {
            storeLE(args.pointer, 16 + index * 8, gfn)
        }
        let result = try await self.call(
            ArgoABI.Op.registerRing,
            args.guestAddress,
            args.guestAddress + 16,
            npages ?? UInt64(pages),
            flags
        )
        if result == 0 {
            self.tracker.ring(.init(raw: self, port: port, partner: partner, memory: ring, length: length))
        }
        return (result, ring)
    }

    func unregister(port: UInt32, partner: UInt16, track: Bool = true) async throws -> Int64 {
        let args = try await self.scratch()
        ArgoUnregisterRing(port: port, partner: partner).store(to: args.pointer)
        return try await self.call(ArgoABI.Op.unregisterRing, args.guestAddress)
    }

    /// sendv with raw structs; `payloads` become iovs in scratch memory.
    func sendv(
        source: ArgoAddr,
        destination: ArgoAddr,
        payloads: [[UInt8]],
        type: UInt64 = UInt64(HMXMessageType.datagram),
        niov: UInt64? = nil,
        mutateIOVs: ((inout [ArgoIOV]) -> Void)? = nil
    ) async throws -> Int64 {
        let total = payloads.reduce(0) { $0 + $1.count }
        let args = try await self.scratch(pages: 1 + (total + 16 * payloads.count) / ArgoABI.pageSize + 1)
        ArgoSendAddr(source: source, destination: destination).store(to: args.pointer)
        var iovs: [ArgoIOV] = []
        var offset = 16 + 16 * max(payloads.count, 1)
        for payload in payloads {
            payload.withUnsafeBytes { bytes in
                if !bytes.isEmpty {
                    (args.pointer + offset).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
                }
            }
            iovs.append(ArgoIOV(address: args.guestAddress + UInt64(offset), length: UInt32(payload.count)))
            offset += payload.count
        }
        mutateIOVs?(&iovs)
        for (index, iov) in iovs.enumerated() { iov.store(to: args.pointer + 16 + index * 16) }
        return try await self.call(
            ArgoABI.Op.sendv,
            args.guestAddress,
            args.guestAddress + 16,
            niov ?? UInt64(iovs.count),
            type
        )
    }

    /// Notify with entries; returns the result and the entries as written back.
    func notify(
        _ entries: [ArgoRingDataEntry],
        count: UInt32? = nil
    ) async throws -> (result: Int64, entries: [ArgoRingDataEntry]) {
        let args = try await self.scratch(pages: 1 + (8 + entries.count * 20) / ArgoABI.pageSize)
        storeLE(args.pointer, 0, count ?? UInt32(entries.count))
        storeLE(args.pointer, 4, UInt32(0))
        for (index, entry) in entries.enumerated() { entry.store(to: args.pointer + 8 + index * 20) }
        let result = try await self.call(ArgoABI.Op.notify, args.guestAddress)
        let back = entries.indices.map { ArgoRingDataEntry(loadingFrom: args.pointer + 8 + $0 * 20) }
        return (result, back)
    }

    func self_(_ port: UInt32 = 0) -> ArgoAddr { ArgoAddr(port: port, domain: self.domain.rawValue) }
}

/// Reads messages out of ring memory registered through ``Raw/register``.
struct RawRing {
    var reader: RingReader

    init(_ scratch: HMXScratch, length: UInt32) {
        self.reader = RingReader(base: scratch.pointer, length: length)
    }

    mutating func next() throws -> (header: ArgoMessageHeader, payload: [UInt8])? {
        guard let message = try self.reader.peek() else { return nil }
        defer { self.reader.consume(message) }
        return (message.header, message.payloadBytes())
    }
}

func expect(_ value: Int64, _ expected: ArgoErrno, _ what: String) throws {
    guard value == -Int64(expected.rawValue) else {
        throw ConformanceSuite.CheckFailure("\(what): expected \(expected.name), got \(describe(value))")
    }
}

func expectSuccess(_ value: Int64, _ what: String, equals expected: Int64 = 0) throws {
    guard value == expected else {
        throw ConformanceSuite.CheckFailure("\(what): expected \(expected), got \(describe(value))")
    }
}

func require(_ condition: Bool, _ what: @autoclosure () -> String) throws {
    if !condition { throw ConformanceSuite.CheckFailure(what()) }
}

func describe(_ value: Int64) -> String {
    value < 0 ? "-" + ArgoErrno(rawValue: Int32(truncatingIfNeeded: -value)).name : "\(value)"
}

/// A port unlikely to collide with anything else in the domain.
func freshPort() -> UInt32 { UInt32.random(in: 0x4000_0000...0x7FFF_FFFF) }

/// Counts a link's events from the moment it is created, so that a check can ask
/// "did an event arrive after this point?" without racing the event's delivery.
final class EventWatch: Sendable {
    private let counter = Mutex(0)

    init(_ link: any HMXLink) {
        link.setEventHandler { [self] in self.counter.withLock { $0 += 1 } }
    }

    var count: Int { self.counter.withLock { $0 } }

    /// Waits until more than `mark` events were seen, or the deadline passes.
    func wait(beyond mark: Int, within milliseconds: Int = 3000) async -> Bool {
        var waited = 0
        while self.count <= mark, waited < milliseconds {
            try? await Task.sleep(nanoseconds: 5_000_000)
            waited += 5
        }
        return self.count > mark
    }

    /// True if no event beyond `mark` arrives within the interval.
    func quiet(beyond mark: Int, for milliseconds: Int = 300) async -> Bool {
        try? await Task.sleep(nanoseconds: UInt64(milliseconds) * 1_000_000)
        return self.count == mark
    }
}
