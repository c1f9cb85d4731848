// SPDX-License-Identifier: Apache-2.0
import HMXCore
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// The emulated hypervisor's Argo state and the four Argo operations, following
/// `xen/common/argo.c` step by step (argument checks, error precedence, ring lookup
/// order, pending-sender queues, wake-ups).
///
/// Not thread-safe: the emulator drives it from a single event loop, which plays the
/// part of Xen's locks. Guest memory is reached only through ``SharedMemory`` bounds
/// checks, so any hostile argument becomes EFAULT or EINVAL, never a crash.
public final class ArgoHypervisor {
    /// Identity of a ring within its owner domain.
    struct RingKey: Hashable {
        var port: UInt32
        var partner: UInt16
    }

    struct Pending {
        var domain: UInt16
        var length: UInt32
    }

    final class Ring {
        let key: RingKey
        var writer: RingWriter
        var pending: [Pending] = []

        init(key: RingKey, writer: RingWriter) {
            self.key = key
            self.writer = writer
        }
    }

    final class Domain {
        let id: UInt16
        let name: String
        let memory: SharedMemory
        /// False models a domain without Argo state (XSM `argo enable` denied).
        let argoEnabled: Bool
        var rings: [RingKey: Ring] = [:]
        /// Xen's `ring_count`: incremented by every successful registration, including
        /// in-place re-registrations, decremented by unregister and by partner-ring
        /// teardown. It is what the 128-ring limit checks, not `rings.count`.
        var ringCount = 0

        init(id: UInt16, name: String, memory: SharedMemory, argoEnabled: Bool) {
            self.id = id
            self.name = name
            self.memory = memory
            self.argoEnabled = argoEnabled
        }
    }

    /// Settings that may change at runtime (reload).
    public struct Settings: Sendable, Equatable {
        /// Xen's `argo=1`. When false every operation returns EOPNOTSUPP.
        public var argoEnabled: Bool
        /// Xen's `mac-permissive=1`: wildcard rings may be registered.
        public var wildcardRingsAllowed: Bool
        public var policy: EmulatorPolicy

        public init(argoEnabled: Bool = true, wildcardRingsAllowed: Bool, policy: EmulatorPolicy) {
            self.argoEnabled = argoEnabled
            self.wildcardRingsAllowed = wildcardRingsAllowed
            self.policy = policy
        }
    }

    public var settings: Settings
    private var domains: [UInt16: Domain] = [:]
    private let raiseEvent: (UInt16) -> Void
    private let logger: Logger
    private var denials = DenialLog()
    /// Names for log messages, for domains that are configured but maybe not attached.
    public var domainNames: [UInt16: String] = [:]

    /// - Parameters:
    ///   - raiseEvent: raises VIRQ_ARGO in a domain (called on the driving loop).
    public init(settings: Settings, logger: Logger, raiseEvent: @escaping (UInt16) -> Void) {
        self.settings = settings
        self.logger = logger
        self.raiseEvent = raiseEvent
    }

    // MARK: - Domain lifecycle

    /// True if a domain with this id exists (is attached).
    public func domainExists(_ id: DomainID) -> Bool { self.domains[id.rawValue] != nil }

    /// Creates a domain (its process attached). Returns false if it already exists.
    public func createDomain(id: DomainID, name: String, memory: SharedMemory, argoEnabled: Bool = true) -> Bool {
        guard self.domains[id.rawValue] == nil else { return false }
        self.domains[id.rawValue] = Domain(id: id.rawValue, name: name, memory: memory, argoEnabled: argoEnabled)
        return true
    }

    /// Destroys a domain (`argo_destroy`): its rings, the rings of other domains that
    /// name it as partner, and its pending waits on other rings all go away.
    public func destroyDomain(id: DomainID) {
        guard let domain = self.domains.removeValue(forKey: id.rawValue) else { return }
        domain.rings.removeAll()
        for other in self.domains.values {
            let removed = other.rings.keys.filter { $0.partner == id.rawValue }.count
            other.ringCount -= removed
            other.rings = other.rings.filter { $0.key.partner != id.rawValue }
            for ring in other.rings.values where ring.key.partner == ArgoABI.domidAny {
                ring.pending.removeAll { $0.domain == id.rawValue }
            }
        }
    }

    /// Xen's ring count of a domain: what the 128-ring limit is checked against.
    public func ringLimitCount(of id: DomainID) -> Int { self.domains[id.rawValue]?.ringCount ?? 0 }

    /// Number of rings a domain holds (for tests and diagnostics).
    public func ringCount(of id: DomainID) -> Int { self.domains[id.rawValue]?.rings.count ?? 0 }

    /// True if `owner` has a ring at `port` for `partner` (for tests and diagnostics).
    public func ringExists(owner: DomainID, port: HMXPort, partner: DomainID) -> Bool {
        self.domains[owner.rawValue]?.rings[RingKey(port: port, partner: partner.rawValue)] != nil
    }

    /// One registered ring, as `hmx-emulator status` shows it.
    public struct RingStatus: Sendable, Equatable {
        public var port: UInt32
        /// The partner domain, or ``ArgoABI/domidAny`` for a wildcard ring.
        public var partner: UInt16
        public var length: UInt32
        /// Bytes of messages the owner has not consumed yet.
        public var usedBytes: UInt32
        public var maximumMessageSize: UInt32
        /// Domains waiting for space on it.
        public var pendingSenders: Int
    }

    /// The rings `id` holds, by port then partner.
    public func rings(of id: DomainID) -> [RingStatus] {
        guard let domain = self.domains[id.rawValue] else { return [] }
        return domain.rings.values.map { ring in
            let rx = ring.writer.sanitizedRxPointer
            let tx = ring.writer.txPointer
            return RingStatus(
                port: ring.key.port,
                partner: ring.key.partner,
                length: ring.writer.length,
                usedBytes: tx >= rx ? tx - rx : ring.writer.length - rx + tx,
                maximumMessageSize: ring.writer.maximumMessageSize,
                pendingSenders: ring.pending.count
            )
        }.sorted { ($0.port, $0.partner) < ($1.port, $1.partner) }
    }

    /// Number of domains waiting for space on a ring (for tests and diagnostics).
    public func pendingCount(owner: DomainID, port: HMXPort, partner: DomainID) -> Int {
        self.domains[owner.rawValue]?.rings[RingKey(port: port, partner: partner.rawValue)]?.pending.count ?? 0
    }

    // MARK: - The hypercall

    /// `do_argo_op`: runs one Argo operation on behalf of `caller`.
    /// - Returns: the hypercall's return value (negative errno on failure).
    public func hypercall(
        caller: DomainID,
        command: UInt32,
        arg1: UInt64,
        arg2: UInt64,
        arg3: UInt64,
        arg4: UInt64
    ) -> Int64 {
        guard let domain = self.domains[caller.rawValue] else { return -Int64(ArgoErrno.ESRCH.rawValue) }
        if arg3 > UInt64(UInt32.max) || arg4 > UInt64(UInt32.max) { return errno(.EINVAL) }
        guard self.settings.argoEnabled else { return errno(.EOPNOTSUPP) }
        switch command {
        case ArgoABI.Op.registerRing:
            if arg3 > ArgoABI.maximumRingPages { return errno(.EINVAL) }
            if domain.memory.pointer(guestAddress: arg2, count: Int(arg3) * 8) == nil { return errno(.EFAULT) }
            return self.registerRing(domain, arg1, arg2, UInt32(arg3), UInt32(arg4))
        case ArgoABI.Op.unregisterRing:
            if arg2 != 0 || arg3 != 0 || arg4 != 0 { return errno(.EINVAL) }
            return self.unregisterRing(domain, arg1)
        case ArgoABI.Op.sendv:
            guard let addrPointer = domain.memory.pointer(guestAddress: arg1, count: ArgoSendAddr.size) else {
                return errno(.EFAULT)
            }
            let sendAddr = ArgoSendAddr(loadingFrom: addrPointer)
            if arg3 > UInt64(ArgoABI.maximumIOVs) { return errno(.EINVAL) }
            let niov = Int(arg3)
            guard let iovPointer = domain.memory.pointer(guestAddress: arg2, count: niov * ArgoIOV.size) else {
                return errno(.EFAULT)
            }
            var iovs: [ArgoIOV] = []
            iovs.reserveCapacity(niov)
            for index in 0..<niov {
                iovs.append(ArgoIOV(loadingFrom: iovPointer + index * ArgoIOV.size))
            }
            return self.sendv(domain, sendAddr, iovs, UInt32(arg4))
        case ArgoABI.Op.notify:
            if arg2 != 0 || arg3 != 0 || arg4 != 0 { return errno(.EINVAL) }
            return self.notify(domain, arg1)
        default:
            return errno(.EOPNOTSUPP)
        }
    }

    // MARK: - register_ring

    private func registerRing(
        _ domain: Domain,
        _ regAddress: UInt64,
        _ gfnAddress: UInt64,
        _ npages: UInt32,
        _ flags: UInt32
    ) -> Int64 {
        if UInt64(flags) & ~ArgoABI.registerFlagFailExist != 0 { return errno(.EINVAL) }
        guard let regPointer = domain.memory.pointer(guestAddress: regAddress, count: ArgoRegisterRing.size) else {
            return errno(.EFAULT)
        }
        let reg = ArgoRegisterRing(loadingFrom: regPointer)
        if reg.length < ArgoABI.minimumRingLength || reg.length > ArgoABI.maximumRingSize
            || reg.length != ArgoABI.roundUpToSlot(reg.length)
            || ArgoABI.pagesForRing(length: reg.length) != UInt64(npages) || reg.pad != 0
        {
            return errno(.EINVAL)
        }
        let key = RingKey(port: reg.port, partner: reg.partner)
        if reg.partner == ArgoABI.domidAny {
            if !self.settings.wildcardRingsAllowed { return errno(.EPERM) }
        } else {
            guard let partner = self.domains[reg.partner] else { return errno(.ESRCH) }
            if !domain.argoEnabled { return errno(.ENODEV) }
            if !partner.argoEnabled { return errno(.ECONNREFUSED) }
        }
        if !domain.argoEnabled { return errno(.ENODEV) }
        if domain.ringCount >= ArgoABI.maximumRingsPerDomain { return errno(.ENOSPC) }
        let existing = domain.rings[key]
        if let existing {
            if UInt64(flags) & ArgoABI.registerFlagFailExist != 0 { return errno(.EEXIST) }
            if existing.writer.length != reg.length { return errno(.EEXIST) }
        }
        // find_ring_mfns: every frame must be ordinary RAM of the registering domain.
        var pages: [UnsafeMutableRawPointer] = []
        pages.reserveCapacity(Int(npages))
        var failure: ArgoErrno?
        for index in 0..<Int(npages) {
            // The array was checked accessible above.
            let gfnPointer = domain.memory.pointer(guestAddress: gfnAddress + UInt64(index) * 8, count: 8)!
            let gfn = UInt64(littleEndian: gfnPointer.loadUnaligned(as: UInt64.self))
            guard let page = domain.memory.page(gfn: gfn) else {
                failure = .EINVAL
                break
            }
            pages.append(page)
        }
        if let failure {
            // Xen drops the ring (new or existing) when its frames are bad, without
            // giving back the existing ring's count.
            if existing != nil { domain.rings[key] = nil }
            return errno(failure)
        }
        let writer = RingWriter(pages: pages, length: reg.length)
        if let existing {
            existing.writer = writer
        } else {
            domain.rings[key] = Ring(key: key, writer: writer)
        }
        // As in Xen, a successful re-registration counts again.
        domain.ringCount += 1
        return 0
    }

    // MARK: - unregister_ring

    private func unregisterRing(_ domain: Domain, _ address: UInt64) -> Int64 {
        guard let pointer = domain.memory.pointer(guestAddress: address, count: ArgoUnregisterRing.size) else {
            return errno(.EFAULT)
        }
        let unreg = ArgoUnregisterRing(loadingFrom: pointer)
        if unreg.pad != 0 { return errno(.EINVAL) }
        if !domain.argoEnabled { return errno(.ENODEV) }
        let key = RingKey(port: unreg.port, partner: unreg.partner)
        guard domain.rings.removeValue(forKey: key) != nil else { return errno(.ENOENT) }
        domain.ringCount -= 1
        return 0
    }

    // MARK: - sendv

    private func sendv(_ source: Domain, _ sendAddr: ArgoSendAddr, _ iovs: [ArgoIOV], _ messageType: UInt32) -> Int64 {
        var sourceAddr = sendAddr.source
        let destinationAddr = sendAddr.destination
        if sourceAddr.pad != 0 || destinationAddr.pad != 0 { return errno(.EINVAL) }
        if sourceAddr.domain == ArgoABI.domidAny { sourceAddr.domain = source.id }
        if sourceAddr.domain != source.id { return errno(.EPERM) }
        guard let destination = self.domains[destinationAddr.domain] else { return errno(.ESRCH) }
        if !self.permits(source.id, destination.id, destinationAddr.port) { return errno(.EACCES) }
        if !source.argoEnabled { return errno(.ENODEV) }
        if !destination.argoEnabled { return errno(.ECONNREFUSED) }
        guard let ring = self.findRing(destination, port: destinationAddr.port, sender: source.id) else {
            return errno(.ECONNREFUSED)
        }
        // iov_count
        var total: UInt32 = 0
        for iov in iovs {
            if iov.pad != 0 { return errno(.EINVAL) }
            if iov.length > ArgoABI.maximumMessageSize { return errno(.EINVAL) }
            total += iov.length
            if total > ArgoABI.maximumMessageSize { return errno(.EMSGSIZE) }
        }
        let memory = source.memory
        let stamped = ArgoAddr(port: sourceAddr.port, domain: source.id)
        // The pieces on the stack (at most 8): no allocation per message.
        let inserted = withUnsafeTemporaryAllocation(of: RingWriter.Piece.self, capacity: iovs.count) { pieces in
            for (index, iov) in iovs.enumerated() {
                pieces.initializeElement(
                    at: index,
                    to: RingWriter.Piece(
                        pointer: UnsafeRawPointer(memory.pointer(guestAddress: iov.address, count: Int(iov.length))),
                        length: iov.length
                    )
                )
            }
            return ring.writer.insert(
                source: stamped,
                messageType: messageType,
                payloadLength: total,
                pieces: UnsafeBufferPointer(pieces)
            )
        }
        switch inserted {
        case .success:
            self.raiseEvent(destination.id)
            return Int64(total)
        case .failure(.messageTooLarge):
            return errno(.EMSGSIZE)
        case .failure(.badAddress):
            return errno(.EFAULT)
        case .failure(.noSpace):
            if let error = self.requeuePending(ring, domain: source.id, length: total) { return errno(error) }
            return errno(.EAGAIN)
        }
    }

    /// `find_ring_info_by_match`: the partner-specific ring first, then the wildcard one.
    private func findRing(_ owner: Domain, port: UInt32, sender: UInt16) -> Ring? {
        if let ring = owner.rings[RingKey(port: port, partner: sender)] { return ring }
        return owner.rings[RingKey(port: port, partner: ArgoABI.domidAny)]
    }

    /// `pending_requeue`: one entry per waiting domain, keeping the largest size.
    private func requeuePending(_ ring: Ring, domain: UInt16, length: UInt32) -> ArgoErrno? {
        if let index = ring.pending.firstIndex(where: { $0.domain == domain }) {
            if ring.pending[index].length < length { ring.pending[index].length = length }
            return nil
        }
        if ring.pending.count >= ArgoABI.maximumPendingPerRing { return .EBUSY }
        ring.pending.append(Pending(domain: domain, length: length))
        return nil
    }

    // MARK: - notify

    private func notify(_ caller: Domain, _ ringDataAddress: UInt64) -> Int64 {
        if !caller.argoEnabled { return errno(.ENODEV) }
        self.wakeWaiters(of: caller)
        if ringDataAddress == 0 { return 0 }
        guard let header = caller.memory.pointer(guestAddress: ringDataAddress, count: ArgoRingData.headerSize) else {
            return errno(.EFAULT)
        }
        let count = UInt32(littleEndian: header.loadUnaligned(as: UInt32.self))
        if count > ArgoABI.maximumNotifyCount { return errno(.EACCES) }
        let entriesAddress = ringDataAddress + UInt64(ArgoRingData.headerSize)
        guard
            let entries = caller.memory.pointer(
                guestAddress: entriesAddress,
                count: Int(count) * ArgoRingDataEntry.size
            )
        else {
            return errno(.EFAULT)
        }
        for index in 0..<Int(count) {
            let pointer = entries + index * ArgoRingDataEntry.size
            if let error = self.fillRingData(caller, pointer) { return errno(error) }
        }
        return 0
    }

    /// `notify_check_pending`: wakes every waiter whose message now fits one of the
    /// caller's rings.
    private func wakeWaiters(of domain: Domain) {
        var toWake: [UInt16] = []
        for ring in domain.rings.values where !ring.pending.isEmpty {
            let space = ring.writer.payloadSpace
            if space == 0 { continue }
            ring.pending.removeAll { entry in
                if space >= entry.length {
                    toWake.append(entry.domain)
                    return true
                }
                return false
            }
        }
        for id in toWake where self.domains[id] != nil {
            self.raiseEvent(id)
        }
    }

    /// `fill_ring_data` for one entry; returns an errno that aborts the notify call.
    private func fillRingData(_ caller: Domain, _ pointer: UnsafeMutableRawPointer) -> ArgoErrno? {
        var entry = ArgoRingDataEntry(loadingFrom: pointer)
        var flags: ArgoABI.RingFlags = []
        if let destination = self.domains[entry.ring.domain], destination.argoEnabled {
            if !self.permits(caller.id, destination.id, entry.ring.port) { return .EACCES }
            if let ring = self.findRing(destination, port: entry.ring.port, sender: caller.id) {
                flags.insert(.exists)
                entry.maxMessageSize = ring.writer.maximumMessageSize
                if ring.key.partner == ArgoABI.domidAny { flags.insert(.shared) }
                let space = ring.writer.payloadSpace
                if entry.spaceRequired > entry.maxMessageSize {
                    flags.insert(.messageTooLarge)
                } else if space >= entry.spaceRequired {
                    ring.pending.removeAll { $0.domain == caller.id }
                    flags.insert(.sufficient)
                } else if self.requeuePending(ring, domain: caller.id, length: entry.spaceRequired) == .EBUSY {
                    flags.insert(.busy)
                }
                if space == entry.maxMessageSize { flags.insert(.empty) }
            }
        }
        storeLE(pointer, ArgoRingDataEntry.flagsOffset, flags.rawValue)
        storeLE(pointer, ArgoRingDataEntry.maxMessageSizeOffset, entry.maxMessageSize)
        return nil
    }

    // MARK: - Policy

    private func permits(_ source: UInt16, _ destination: UInt16, _ port: UInt32) -> Bool {
        if self.settings.policy.allows(source: DomainID(source), destination: DomainID(destination), port: port) {
            return true
        }
        if self.denials.shouldLog(source: source, destination: destination, port: port) {
            self.logger.warning(
                "denied by emulator policy",
                metadata: [
                    "source.domain": "\(self.name(of: source))",
                    "destination.domain": "\(self.name(of: destination))",
                    "destination.port": "\(port)",
                ]
            )
        }
        return false
    }

    private func name(of id: UInt16) -> String {
        if let name = self.domains[id]?.name ?? self.domainNames[id] { return "\(id) (\(name))" }
        return "\(id)"
    }

    /// Forgets which denials were logged, so that the next one of each is logged again.
    public func resetDenialLog() {
        self.denials = DenialLog()
    }

    @inline(__always)
    private func errno(_ value: ArgoErrno) -> Int64 { -Int64(value.rawValue) }
}

/// Remembers which (source, destination, port) denials were logged recently, so each
/// is logged once per interval, with a bounded number of entries.
struct DenialLog {
    struct Key: Hashable {
        var source: UInt16
        var destination: UInt16
        var port: UInt32
    }
    static let capacity = 4096
    static let intervalNanoseconds: UInt64 = 60_000_000_000
    private var lastLogged: [Key: UInt64] = [:]

    mutating func shouldLog(
        source: UInt16,
        destination: UInt16,
        port: UInt32,
        now: UInt64 = DenialLog.monotonicNow()
    ) -> Bool {
        let key = Key(source: source, destination: destination, port: port)
        if let last = self.lastLogged[key], now &- last < Self.intervalNanoseconds { return false }
        if self.lastLogged.count >= Self.capacity { self.lastLogged.removeAll(keepingCapacity: true) }
        self.lastLogged[key] = now
        return true
    }

    static func monotonicNow() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }
}
