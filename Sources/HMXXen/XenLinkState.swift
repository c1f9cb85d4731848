// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The loop-confined half of ``XenLink``: the privcmd handle, the staging buffer, the
/// registered rings with their frames, and the event handler.
final class XenLinkState: LoopConfinedLinkState {
    struct RingKey: Hashable {
        var port: HMXPort
        var partner: DomainID
    }

    struct RingEntry {
        var ring: HMXRing
        var frames: XenFrames
    }

    let eventLoop: any EventLoop
    var eventHandler: (@Sendable () -> Void)?
    private(set) var isClosed = false
    /// Set by ``XenLink/close()`` when it starts stopping the pump.
    var isClosing = false
    private var hypervisor: XenHypervisor?
    private var staging: UnsafeMutableRawPointer
    private var stagingPages: Int
    private var stagingSize: Int { self.stagingPages * ArgoABI.pageSize }
    private var rings: [RingKey: RingEntry] = [:]
    private var scratch: [XenFrames] = []
    private var nextToken = 1

    init(hypervisor: XenHypervisor, eventLoop: any EventLoop, staging: UnsafeMutableRawPointer, stagingPages: Int) {
        self.hypervisor = hypervisor
        self.eventLoop = eventLoop
        self.staging = staging
        self.stagingPages = stagingPages
    }

    deinit {
        self.shutdown()
    }

    private var closedError: HMXError { HMXError(code: .linkClosed, message: "the Xen link is closed") }

    // MARK: - Staging

    /// Staging never grows beyond this (4 MiB); larger requests get a temporary buffer.
    static let maximumStagingPages = 1024

    /// Runs `body` with `size` bytes of zeroed hypercall-safe memory: the staging
    /// buffer, grown to fit (up to ``maximumStagingPages``), or a temporary buffer for
    /// larger requests. Growing keeps large messages (a 64 KiB payload does not fit the
    /// default 16 pages with its headers) from paying a buffer mmap per hypercall.
    private func withHypercallMemory<T>(
        _ hypervisor: XenHypervisor,
        size: Int,
        _ body: (UnsafeMutableRawPointer) -> T
    ) -> Result<T, HMXError> {
        let pages = (size + ArgoABI.pageSize - 1) / ArgoABI.pageSize
        if size > self.stagingSize, pages <= Self.maximumStagingPages,
            let grown = hypervisor.allocateBuffer(pages: pages)
        {
            hypervisor.freeBuffer(self.staging, pages: self.stagingPages)
            self.staging = grown
            self.stagingPages = pages
        }
        if size <= self.stagingSize {
            memset(self.staging, 0, size)
            return .success(body(self.staging))
        }
        guard let buffer = hypervisor.allocateBuffer(pages: pages) else {
            return .failure(
                HMXError(code: .resourceExhausted, message: "cannot allocate \(pages) hypercall buffer pages")
            )
        }
        defer { hypervisor.freeBuffer(buffer, pages: pages) }
        return .success(body(buffer))
    }

    private func address(_ pointer: UnsafeMutableRawPointer) -> UInt64 {
        UInt64(UInt(bitPattern: pointer))
    }

    /// Arguments staged in hypercall memory: Xen reads them by virtual address.
    private func arguments(_ pointer: UnsafeMutableRawPointer) -> ArgoArguments {
        ArgoArguments(pointer: pointer, guestAddress: self.address(pointer))
    }

    // MARK: - Operations

    func raw(command: UInt32, arg1: UInt64, arg2: UInt64, arg3: UInt64, arg4: UInt64) -> EventLoopFuture<Int64> {
        guard let hypervisor = self.hypervisor else { return self.eventLoop.makeFailedFuture(self.closedError) }
        return self.eventLoop.makeSucceededFuture(hypervisor.argoOp(command, arg1, arg2, arg3, arg4))
    }

    /// - Parameter resultMayBeLate: ignored: the hypercall is synchronous, its result
    ///   is known at once.
    func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool
    )
        -> EventLoopFuture<Int>
    {
        self.eventLoop.makeCompletedFuture(
            self.sendv(from: port, to: destination, type: type, iovecs: iovecs).mapError { $0 }
        )
    }

    /// The tagged send: the result goes to `sink` before this returns.
    func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool,
        tag: UInt64,
        resultsTo sink: any HMXSendResultSink
    ) {
        sink.sendCompleted(tag: tag, self.sendv(from: port, to: destination, type: type, iovecs: iovecs))
    }

    private func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer]
    ) -> Result<Int, HMXError> {
        guard let hypervisor = self.hypervisor else { return .failure(self.closedError) }
        guard iovecs.count <= ArgoABI.maximumIOVs else {
            return .failure(HMXError.argo(.EINVAL, "more than \(ArgoABI.maximumIOVs) iovecs"))
        }
        let size = ArgoArguments.sendvSize(iovecs: iovecs)
        let result = self.withHypercallMemory(hypervisor, size: size) { pointer -> Int64 in
            // Source domain DOMID_ANY: Xen stamps our real id into the header.
            hypervisor.argoOp(
                self.arguments(pointer).sendv(
                    from: port,
                    sourceDomain: .any,
                    to: destination,
                    type: type,
                    iovecs: iovecs
                )
            )
        }
        return result.flatMap { rc in
            rc < 0 ? .failure(HMXError.argo(ArgoErrno(rawValue: Int32(truncatingIfNeeded: -rc)))) : .success(Int(rc))
        }
    }

    func notify(_ queries: [HMXNotifyQuery]) -> EventLoopFuture<[HMXNotifyResult]> {
        guard let hypervisor = self.hypervisor else { return self.eventLoop.makeFailedFuture(self.closedError) }
        if queries.isEmpty {
            let rc = hypervisor.argoOp(ArgoArguments.nullNotify)
            return rc < 0
                ? self.eventLoop.makeFailedFuture(HMXError.argo(ArgoErrno(rawValue: Int32(truncatingIfNeeded: -rc))))
                : self.eventLoop.makeSucceededFuture([])
        }
        let size = ArgoArguments.notifySize(queryCount: queries.count)
        let result = self.withHypercallMemory(hypervisor, size: size) {
            pointer -> Result<[HMXNotifyResult], HMXError> in
            let arguments = self.arguments(pointer)
            let rc = hypervisor.argoOp(arguments.notify(queries))
            if rc < 0 { return .failure(HMXError.argo(ArgoErrno(rawValue: Int32(truncatingIfNeeded: -rc)))) }
            return .success(arguments.notifyResults(for: queries))
        }
        switch result {
        case .failure(let error): return self.eventLoop.makeFailedFuture(error)
        case .success(.failure(let error)): return self.eventLoop.makeFailedFuture(error)
        case .success(.success(let results)): return self.eventLoop.makeSucceededFuture(results)
        }
    }

    func registerRing(port: HMXPort, partner: DomainID, length: UInt32, failIfExists: Bool) -> EventLoopFuture<HMXRing>
    {
        guard let hypervisor = self.hypervisor else { return self.eventLoop.makeFailedFuture(self.closedError) }
        guard length >= ArgoABI.minimumRingLength, length % ArgoABI.messageSlotSize == 0,
            length <= ArgoABI.maximumUsableRingLength
        else {
            // Xen would refuse it too; no frames are spent on it.
            return self.eventLoop.makeFailedFuture(
                HMXError.argo(
                    .EINVAL,
                    "ring length \(length) is not a multiple of 16 in 48...\(ArgoABI.maximumUsableRingLength)"
                )
            )
        }
        let pages = Int(ArgoABI.pagesForRing(length: length))
        let frames: XenFrames
        switch hypervisor.allocateFrames(pages: pages) {
        case .success(let allocated):
            frames = allocated
        case .failure(let failure):
            let errno = failure.errno
            return self.eventLoop.makeFailedFuture(
                HMXError(
                    code: .resourceExhausted,
                    errno: errno,
                    message: "cannot get \(pages) ring frame(s): \(errno.name); raise the domain's memory limit "
                        + "(dom0_mem=X,max:Y with Y > X; for a domU: xl mem-max)"
                )
            )
        }
        let key = RingKey(port: port, partner: partner)
        // Never re-register a ring in place: Xen 4.17's register_ring increments the
        // domain's ring_count on every success, also when it only swaps the frames of an
        // existing ring, while unregister_ring decrements it once (xen/common/argo.c).
        // Each in-place re-registration would use up one of the 128 ring slots for the
        // rest of the domain's life. So register with FAIL_EXIST, and if a ring with
        // this id exists (ours, or one left behind by a crashed earlier run), unregister
        // it and register again.
        var rc = self.issueRegister(
            hypervisor,
            port: port,
            partner: partner,
            length: length,
            frames: frames.frames,
            failIfExists: true
        )
        if rc == -Int64(ArgoErrno.EEXIST.rawValue), !failIfExists {
            let unregistered = self.issueUnregister(hypervisor, port: port, partner: partner)
            if unregistered >= 0 || unregistered == -Int64(ArgoErrno.ENOENT.rawValue),
                let old = self.rings.removeValue(forKey: key)
            {
                // Xen no longer references our earlier ring's frames.
                old.ring.markClosed()
                hypervisor.freeFrames(old.frames)
            }
            rc = self.issueRegister(
                hypervisor,
                port: port,
                partner: partner,
                length: length,
                frames: frames.frames,
                failIfExists: true
            )
        }
        guard rc >= 0 else {
            hypervisor.freeFrames(frames)
            return self.eventLoop.makeFailedFuture(HMXError.argo(ArgoErrno(rawValue: Int32(truncatingIfNeeded: -rc))))
        }
        if let old = self.rings.removeValue(forKey: key) {
            // Xen had no ring with this id (FAIL_EXIST passed), so it does not use these.
            old.ring.markClosed()
            hypervisor.freeFrames(old.frames)
        }
        let ring = HMXRing(
            port: port,
            partner: partner,
            length: length,
            memory: frames.mapping,
            backendToken: self.nextToken
        )
        self.nextToken += 1
        self.rings[key] = RingEntry(ring: ring, frames: frames)
        return self.eventLoop.makeSucceededFuture(ring)
    }

    func unregisterRing(_ ring: HMXRing) -> EventLoopFuture<Void> {
        guard let hypervisor = self.hypervisor else { return self.eventLoop.makeFailedFuture(self.closedError) }
        let key = RingKey(port: ring.port, partner: ring.partner)
        let rc = self.issueUnregister(hypervisor, port: ring.port, partner: ring.partner)
        if let entry = self.rings[key], entry.ring === ring,
            rc >= 0 || rc == -Int64(ArgoErrno.ENOENT.rawValue)
        {
            // Xen no longer references the frames.
            self.rings[key] = nil
            ring.markClosed()
            hypervisor.freeFrames(entry.frames)
        }
        guard rc >= 0 else {
            return self.eventLoop.makeFailedFuture(HMXError.argo(ArgoErrno(rawValue: Int32(truncatingIfNeeded: -rc))))
        }
        return self.eventLoop.makeSucceededVoidFuture()
    }

    func allocateScratch(pages: Int) -> EventLoopFuture<(HMXScratch, [UInt64])> {
        guard let hypervisor = self.hypervisor else { return self.eventLoop.makeFailedFuture(self.closedError) }
        guard pages > 0 else { return self.eventLoop.makeFailedFuture(HMXError.argo(.EINVAL, "zero pages")) }
        switch hypervisor.allocateFrames(pages: pages) {
        case .success(let frames):
            self.scratch.append(frames)
            let scratch = HMXScratch(guestAddress: self.address(frames.mapping), pointer: frames.mapping, pages: pages)
            return self.eventLoop.makeSucceededFuture((scratch, frames.frames))
        case .failure(let failure):
            return self.eventLoop.makeFailedFuture(
                HMXError(
                    code: .resourceExhausted,
                    errno: failure.errno,
                    message: "cannot get \(pages) frame(s): \(failure.errno.name)"
                )
            )
        }
    }

    private func issueRegister(
        _ hypervisor: XenHypervisor,
        port: HMXPort,
        partner: DomainID,
        length: UInt32,
        frames: [UInt64],
        failIfExists: Bool
    ) -> Int64 {
        let size = ArgoArguments.registerRingSize(frameCount: frames.count)
        let result = self.withHypercallMemory(hypervisor, size: size) { pointer -> Int64 in
            let call = self.arguments(pointer).registerRing(
                port: port,
                partner: partner,
                length: length,
                frames: frames,
                failIfExists: failIfExists
            )
            return hypervisor.argoOp(call)
        }
        switch result {
        case .success(let rc): return rc
        case .failure: return -Int64(ArgoErrno.ENOMEM.rawValue)
        }
    }

    private func issueUnregister(_ hypervisor: XenHypervisor, port: HMXPort, partner: DomainID) -> Int64 {
        let result = self.withHypercallMemory(hypervisor, size: ArgoArguments.unregisterRingSize) { pointer -> Int64 in
            hypervisor.argoOp(self.arguments(pointer).unregisterRing(port: port, partner: partner))
        }
        switch result {
        case .success(let rc): return rc
        case .failure: return -Int64(ArgoErrno.ENOMEM.rawValue)
        }
    }

    /// Returns scratch frames. The caller guarantees they are no longer registered as a
    /// ring (the conformance suite unregisters its rings first).
    func releaseScratch(at pointer: UnsafeMutableRawPointer) {
        guard let hypervisor = self.hypervisor,
            let index = self.scratch.firstIndex(where: { $0.mapping == pointer })
        else { return }
        hypervisor.freeFrames(self.scratch.remove(at: index))
    }

    /// Unregisters every ring, returns all frames and buffers, closes privcmd.
    func shutdown() {
        guard let hypervisor = self.hypervisor else { return }
        self.isClosed = true
        for (key, entry) in self.rings {
            let rc = self.issueUnregister(hypervisor, port: key.port, partner: key.partner)
            entry.ring.markClosed()
            // Frames Xen may still reference (unregister failed) are kept: they belong
            // to no one else, so leaking them is safe; freeing them would not be.
            if rc >= 0 || rc == -Int64(ArgoErrno.ENOENT.rawValue) { hypervisor.freeFrames(entry.frames) }
        }
        self.rings.removeAll()
        for frames in self.scratch { hypervisor.freeFrames(frames) }
        self.scratch.removeAll()
        hypervisor.freeBuffer(self.staging, pages: self.stagingPages)
        self.hypervisor = nil
        self.eventHandler?()
        self.eventHandler = nil
    }
}

@available(*, unavailable)
extension XenLinkState: Sendable {}
