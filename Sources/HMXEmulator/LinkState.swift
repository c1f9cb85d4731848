// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The loop-confined half of ``EmulatorLink``: staging, ring pages, requests in
/// flight and the event handler.
final class LinkState: LoopConfinedLinkState {
    enum Completion {
        case sendv(EventLoopPromise<Int>)
        /// A tagged send: no promise, the result goes to the sink.
        case taggedSendv(UInt64, any HMXSendResultSink)
        case register(EventLoopPromise<HMXRing>, RingRequest)
        case unregister(EventLoopPromise<Void>, HMXRing)
        case notify(EventLoopPromise<[HMXNotifyResult]>, entries: Int, queries: [HMXNotifyQuery])
        case raw(EventLoopPromise<Int64>)

        func fail(_ error: HMXError) {
            switch self {
            case .sendv(let promise): promise.fail(error)
            case .taggedSendv(let tag, let sink): sink.sendCompleted(tag: tag, .failure(error))
            case .register(let promise, _): promise.fail(error)
            case .unregister(let promise, _): promise.fail(error)
            case .notify(let promise, _, _): promise.fail(error)
            case .raw(let promise): promise.fail(error)
            }
        }
    }

    struct RingRequest {
        var port: HMXPort
        var partner: DomainID
        var length: UInt32
        var firstPage: Int
        var pageCount: Int
    }

    struct InFlight {
        var tag: UInt32
        /// Guest address of this request's staging, or nil if it used none.
        var stagingOffset: Int?
        /// End of this request's staging allocation (arena offset).
        var stagingEnd: Int?
        var completion: Completion
    }

    struct RingKey: Hashable {
        var port: HMXPort
        var partner: DomainID
    }

    let channel: any Channel
    let domain: DomainID
    let memory: SharedMemory
    let stagingBase: Int
    let maximumQueued: Int
    var staging: StagingArena
    var pages: PageAllocator
    var eventHandler: (@Sendable () -> Void)?
    private var inFlight = CircularBuffer<InFlight>(initialCapacity: 64)
    /// Requests waiting for staging space, in issue order.
    private var waiting = CircularBuffer<
        (size: Int, completion: Completion, prepare: (Int?) -> (UInt32, UInt64, UInt64, UInt64, UInt64))
    >()
    private var rings: [RingKey: HMXRing] = [:]
    private var nextTag: UInt32 = 1
    /// Hypercall frames issued in this loop tick, written in one go at its end.
    private var output = ByteBuffer()
    private var isFlushScheduled = false
    private(set) var isClosed = false

    init(
        channel: any Channel,
        domain: DomainID,
        memory: SharedMemory,
        stagingBase: Int,
        stagingSize: Int,
        maximumQueued: Int
    ) {
        self.channel = channel
        self.domain = domain
        self.memory = memory
        self.stagingBase = stagingBase
        self.maximumQueued = maximumQueued
        self.staging = StagingArena(size: stagingSize)
        let firstRingPage = (stagingBase + stagingSize) / ArgoABI.pageSize
        self.pages = PageAllocator(firstPage: firstRingPage, pageCount: memory.pageCount - firstRingPage)
    }

    private var eventLoop: any EventLoop { self.channel.eventLoop }

    // MARK: - Operations

    /// - Parameter resultMayBeLate: the hypercall is marked deferrable (``LinkWire``)
    ///   unless staging is half full or requests wait for it: then results free staging
    ///   and must come back at once.
    func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool
    )
        -> EventLoopFuture<Int>
    {
        let promise = self.eventLoop.makePromise(of: Int.self)
        self.sendv(
            from: port,
            to: destination,
            type: type,
            iovecs: iovecs,
            resultMayBeLate: resultMayBeLate,
            completion: .sendv(promise)
        )
        return promise.futureResult
    }

    func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool,
        tag: UInt64,
        resultsTo sink: any HMXSendResultSink
    ) {
        self.sendv(
            from: port,
            to: destination,
            type: type,
            iovecs: iovecs,
            resultMayBeLate: resultMayBeLate,
            completion: .taggedSendv(tag, sink)
        )
    }

    private func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool,
        completion: Completion
    ) {
        guard iovecs.count <= ArgoABI.maximumIOVs else {
            completion.fail(HMXError.argo(.EINVAL, "more than \(ArgoABI.maximumIOVs) iovecs"))
            return
        }
        let size = ArgoArguments.sendvSize(iovecs: iovecs)
        let domain = self.domain
        let memory = self.memory
        let deferrable =
            resultMayBeLate && self.waiting.isEmpty && self.staging.usedBytes + size <= self.staging.size / 2
        func prepare(_ offset: Int?) -> Arguments {
            // The emulator takes the source domain as given: it must be our own id.
            Self.arguments(memory, offset!).sendv(
                from: port,
                sourceDomain: domain,
                to: destination,
                type: type,
                iovecs: iovecs
            )
        }
        // The usual case issues at once, without a closure on the heap.
        if !self.issueNow(size: size, completion: completion, deferrable: deferrable, prepare: prepare) {
            self.waiting.append((size, completion, prepare))
        }
    }

    func registerRing(port: HMXPort, partner: DomainID, length: UInt32, failIfExists: Bool) -> EventLoopFuture<HMXRing>
    {
        let promise = self.eventLoop.makePromise(of: HMXRing.self)
        // Sizes that Xen would refuse still go to the hypervisor (it decides), but we
        // only allocate pages for lengths that make sense.
        let pageCount = Int(min(ArgoABI.pagesForRing(length: length), ArgoABI.maximumRingPages))
        guard let firstPage = self.pages.allocate(pageCount) else {
            promise.fail(
                HMXError(
                    code: .resourceExhausted,
                    message: "no room for a \(length)-byte ring in this domain's ring memory"
                )
            )
            return promise.futureResult
        }
        memset(self.memory.base + firstPage * ArgoABI.pageSize, 0, pageCount * ArgoABI.pageSize)
        let request = RingRequest(
            port: port,
            partner: partner,
            length: length,
            firstPage: firstPage,
            pageCount: pageCount
        )
        let size = ArgoArguments.registerRingSize(frameCount: pageCount)
        self.issue(size: size, completion: .register(promise, request)) { [memory] offset in
            // Guest frame numbers are page indices into domain memory.
            let frames = (0..<pageCount).lazy.map { UInt64(firstPage + $0) }
            return Self.arguments(memory, offset!).registerRing(
                port: port,
                partner: partner,
                length: length,
                frames: frames,
                failIfExists: failIfExists
            )
        }
        return promise.futureResult
    }

    func unregisterRing(_ ring: HMXRing) -> EventLoopFuture<Void> {
        let promise = self.eventLoop.makePromise(of: Void.self)
        self.issue(size: ArgoArguments.unregisterRingSize, completion: .unregister(promise, ring)) { [memory] offset in
            Self.arguments(memory, offset!).unregisterRing(port: ring.port, partner: ring.partner)
        }
        return promise.futureResult
    }

    func notify(_ queries: [HMXNotifyQuery]) -> EventLoopFuture<[HMXNotifyResult]> {
        let promise = self.eventLoop.makePromise(of: [HMXNotifyResult].self)
        if queries.isEmpty {
            self.issue(size: 0, completion: .notify(promise, entries: 0, queries: [])) { _ in ArgoArguments.nullNotify }
            return promise.futureResult
        }
        let size = ArgoArguments.notifySize(queryCount: queries.count)
        self.issue(size: size, completion: .notify(promise, entries: 0, queries: queries)) { [memory] offset in
            Self.arguments(memory, offset!).notify(queries)
        }
        return promise.futureResult
    }

    func raw(command: UInt32, arg1: UInt64, arg2: UInt64, arg3: UInt64, arg4: UInt64) -> EventLoopFuture<Int64> {
        let promise = self.eventLoop.makePromise(of: Int64.self)
        self.issue(size: 0, completion: .raw(promise)) { _ in (command, arg1, arg2, arg3, arg4) }
        return promise.futureResult
    }

    // MARK: - Issuing

    /// Arguments staged at guest address `offset`: guest addresses are offsets into
    /// this domain's memory.
    private static func arguments(_ memory: SharedMemory, _ offset: Int) -> ArgoArguments {
        ArgoArguments(pointer: memory.base + offset, guestAddress: UInt64(offset))
    }

    private typealias Arguments = (UInt32, UInt64, UInt64, UInt64, UInt64)

    /// Allocates staging (waiting in FIFO order if there is none), lets `prepare` fill
    /// it, and sends the hypercall.
    private func issue(
        size: Int,
        completion: Completion,
        deferrable: Bool = false,
        prepare: @escaping (Int?) -> Arguments
    ) {
        if !self.issueNow(size: size, completion: completion, deferrable: deferrable, prepare: prepare) {
            self.waiting.append((size, completion, prepare))
        }
    }

    /// ``issue(size:completion:deferrable:prepare:)`` up to the queueing: false if the
    /// request must wait for staging (the caller queues it), true if it was sent or
    /// has failed.
    private func issueNow(
        size: Int,
        completion: Completion,
        deferrable: Bool,
        prepare: (Int?) -> Arguments
    ) -> Bool {
        if self.isClosed {
            completion.fail(HMXError(code: .linkClosed, message: "the link to the emulator is closed"))
            return true
        }
        if size > self.staging.size {
            completion.fail(
                HMXError(code: .resourceExhausted, message: "request of \(size) bytes exceeds the staging area")
            )
            return true
        }
        if self.waiting.isEmpty,
            self.tryIssue(size: size, completion: completion, deferrable: deferrable, prepare: prepare)
        {
            return true
        }
        guard self.waiting.count < self.maximumQueued else {
            completion.fail(HMXError(code: .resourceExhausted, message: "too many requests waiting for the emulator"))
            return true
        }
        return false
    }

    private func tryIssue(
        size: Int,
        completion: Completion,
        deferrable: Bool = false,
        prepare: (Int?) -> Arguments
    ) -> Bool {
        var stagingEnd: Int?
        var offset: Int?
        if size > 0 {
            guard let allocation = self.staging.allocate(size) else { return false }
            offset = self.stagingBase + allocation.offset
            stagingEnd = allocation.end
        }
        let (command, arg1, arg2, arg3, arg4) = prepare(offset)
        let tag = self.nextTag
        self.nextTag &+= 1
        self.inFlight.append(InFlight(tag: tag, stagingOffset: offset, stagingEnd: stagingEnd, completion: completion))
        self.output.writeLinkFrame(
            .hypercall(
                tag: tag,
                command: command,
                arg1: arg1,
                arg2: arg2,
                arg3: arg3,
                arg4: arg4,
                deferrable: deferrable
            )
        )
        self.scheduleFlush()
        return true
    }

    private func scheduleFlush() {
        if self.isFlushScheduled { return }
        self.isFlushScheduled = true
        self.eventLoop.assumeIsolated().execute {
            self.isFlushScheduled = false
            guard self.output.readableBytes > 0 else { return }
            self.channel.writeAndFlush(self.output, promise: nil)
            // Reuses the storage when the write went out at once (the usual case).
            self.output.clear()
        }
    }

    private func drainWaiting() {
        while let first = self.waiting.first {
            guard self.tryIssue(size: first.size, completion: first.completion, prepare: first.prepare) else { return }
            self.waiting.removeFirst()
        }
    }

    // MARK: - Inbound

    func received(_ frame: LinkWire.Frame) {
        switch frame {
        case .result(let tag, let value):
            guard let request = self.inFlight.popFirst(), request.tag == tag else {
                self.channel.close(promise: nil)
                return
            }
            self.complete(request, value: value)
            if let end = request.stagingEnd {
                self.staging.releaseOldest(end: end)
                self.drainWaiting()
            }
        case .event:
            self.eventHandler?()
        case .hypercall, .eventAck:
            self.channel.close(promise: nil)
        }
    }

    private func complete(_ request: InFlight, value: Int64) {
        let completion = request.completion
        if value < 0 {
            let error = HMXError.argo(ArgoErrno(rawValue: Int32(truncatingIfNeeded: -value)))
            if case .register(_, let request) = completion {
                self.pages.release(start: request.firstPage, count: request.pageCount)
            }
            if case .raw(let promise) = completion {
                promise.succeed(value)
            } else {
                completion.fail(error)
            }
            return
        }
        switch completion {
        case .sendv(let promise):
            promise.succeed(Int(value))
        case .taggedSendv(let tag, let sink):
            sink.sendCompleted(tag: tag, .success(Int(value)))
        case .register(let promise, let request):
            let key = RingKey(port: request.port, partner: request.partner)
            if let old = self.rings[key] {
                // Re-registration replaced the old ring's pages.
                old.markClosed()
                self.pages.release(start: old.backendToken, count: Int(ArgoABI.pagesForRing(length: old.length)))
            }
            let ring = HMXRing(
                port: request.port,
                partner: request.partner,
                length: request.length,
                memory: self.memory.base + request.firstPage * ArgoABI.pageSize,
                backendToken: request.firstPage
            )
            self.rings[key] = ring
            promise.succeed(ring)
        case .unregister(let promise, let ring):
            let key = RingKey(port: ring.port, partner: ring.partner)
            if self.rings[key] === ring {
                self.rings[key] = nil
                ring.markClosed()
                self.pages.release(start: ring.backendToken, count: Int(ArgoABI.pagesForRing(length: ring.length)))
            }
            promise.succeed(())
        case .notify(let promise, _, let queries):
            // The entries are still in staging: this request's allocation is released
            // only after we return.
            guard !queries.isEmpty else {
                promise.succeed([])
                return
            }
            let results = Self.arguments(self.memory, request.stagingOffset!).notifyResults(for: queries)
            promise.succeed(results)
        case .raw(let promise):
            promise.succeed(value)
        }
    }

    /// The connection is gone: fail everything, close every ring.
    func closed() {
        guard !self.isClosed else { return }
        self.isClosed = true
        let error = HMXError(code: .linkClosed, message: "the link to the emulator is closed")
        while let request = self.inFlight.popFirst() { request.completion.fail(error) }
        while let entry = self.waiting.popFirst() { entry.completion.fail(error) }
        for ring in self.rings.values { ring.markClosed() }
        self.rings.removeAll()
        // Wake the owner so it notices the closed link.
        self.eventHandler?()
    }
}

@available(*, unavailable)
extension LinkState: Sendable {}
