// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXEmulator
import NIOCore
import NIOEmbedded

#if canImport(Glibc)
import Glibc
#endif

/// An ``HMXLink`` to an ``InProcessHypervisor``: one domain, driven by the test.
///
/// Memory is laid out as ``EmulatorLink`` lays it out (NULL page, staging, ring
/// pages), arguments are staged with ``ArgoArguments`` and guest addresses are
/// offsets into the domain's memory; rings are real ``HMXRing``s over its ring pages.
///
/// Two modes decide *when* things happen:
/// * ``Mode/immediate``: each operation runs its hypercall at once and its future is
///   complete when the call returns; events run the handler at once (after the
///   hypercall that raised them).
/// * ``Mode/scheduled``: operations wait in a FIFO queue until the test calls
///   ``runNextRequest()``; events only set ``hasPendingEvent`` until
///   ``deliverEvent()``. This is the emulator's model: one domain's hypercalls execute
///   in order, at a time of the scheduler's choosing, interleaved with other domains'.
///
/// When the domain is destroyed (``InProcessHypervisor/destroy(_:)`` or ``close()``)
/// the link closes: ``closeFuture`` succeeds, queued requests and later calls fail
/// with ``HMXError/Code/linkClosed``, and the event handler runs once so that its
/// owner notices, as with the emulator link.
public final class InProcessLink: HMXLink, @unchecked Sendable {
    // @unchecked: HMXLink must be Sendable, but this link is confined to the thread of
    // its EmbeddedEventLoop (which checks that it is used from one thread only); every
    // mutable property is touched only there, by the test or by loop callbacks.

    public enum Mode: Sendable {
        case immediate
        case scheduled
    }

    /// One hypercall waiting to run: what to stage, and what to do with the result.
    private struct Request {
        /// Stores the arguments in staging and returns the hypercall.
        var stage: (ArgoArguments) -> ArgoArguments.Hypercall
        /// Reads the results (still in staging) and returns what completes the future.
        /// Holds the link unowned: a queued request must not keep it alive.
        var finish: (Int64, ArgoArguments) -> () -> Void
        var fail: (HMXError) -> Void
    }

    private struct RingKey: Hashable {
        var port: HMXPort
        var partner: DomainID
    }

    public let mode: Mode
    public let localDomain: DomainID
    /// The domain's memory, shared with the hypervisor.
    public let memory: SharedMemory
    /// Pages available for rings in total.
    public let ringPageCount: Int
    private let embeddedLoop: EmbeddedEventLoop
    private weak var owner: InProcessHypervisor?
    private let stagingBase: Int
    private let stagingSize: Int
    private var pages: PageAllocator
    private var rings: [RingKey: HMXRing] = [:]
    private var queue = CircularBuffer<Request>()
    private var eventHandler: (@Sendable () -> Void)?
    private let closePromise: EventLoopPromise<Void>
    /// True once the domain was destroyed or the link closed.
    public private(set) var isClosed = false
    /// True if an event arrived in ``Mode/scheduled`` that ``deliverEvent()`` has not
    /// delivered yet. Events coalesce: many raised are one pending.
    public private(set) var hasPendingEvent = false

    init(
        owner: InProcessHypervisor,
        domain: DomainID,
        memory: SharedMemory,
        stagingBase: Int,
        stagingSize: Int,
        mode: Mode
    ) {
        self.owner = owner
        self.embeddedLoop = owner.eventLoop
        self.localDomain = domain
        self.memory = memory
        self.stagingBase = stagingBase
        self.stagingSize = stagingSize
        self.mode = mode
        let firstRingPage = (stagingBase + stagingSize) / ArgoABI.pageSize
        self.ringPageCount = memory.pageCount - firstRingPage
        self.pages = PageAllocator(firstPage: firstRingPage, pageCount: self.ringPageCount)
        self.closePromise = owner.eventLoop.makePromise()
    }

    deinit {
        // A link dropped without being closed still completes its futures: NIO treats
        // an uncompleted promise as a leak. The handler is not run: nobody is left.
        if !self.isClosed {
            self.failAll()
            self.closePromise.succeed(())
        }
    }

    public var eventLoop: any EventLoop { self.embeddedLoop }

    public var closeFuture: EventLoopFuture<Void> { self.closePromise.futureResult }

    /// Ring pages not used by a registered ring.
    public var freeRingPages: Int { self.pages.freePages }

    /// Requests waiting for ``runNextRequest()`` (always 0 in ``Mode/immediate``).
    public var pendingRequests: Int { self.queue.count }

    private var closedError: HMXError {
        HMXError(code: .linkClosed, message: "domain \(self.localDomain) was destroyed")
    }

    // MARK: - Scheduling

    /// Runs the oldest queued hypercall against the hypervisor and completes its future.
    /// - Returns: false if no request was waiting.
    @discardableResult
    public func runNextRequest() -> Bool {
        guard let request = self.queue.popFirst() else { return false }
        self.execute(request)
        return true
    }

    /// Runs queued requests, including those queued meanwhile, until none is left.
    /// - Returns: how many ran.
    @discardableResult
    public func runAllRequests() -> Int {
        var count = 0
        while self.runNextRequest() { count += 1 }
        return count
    }

    /// Runs the event handler if an event is pending.
    /// - Returns: false if none was.
    @discardableResult
    public func deliverEvent() -> Bool {
        guard self.hasPendingEvent else { return false }
        self.hasPendingEvent = false
        self.eventHandler?()
        return true
    }

    /// The hypervisor raised VIRQ_ARGO in this domain (outside any hypercall).
    func eventRaised() {
        guard !self.isClosed else { return }
        switch self.mode {
        case .immediate: self.eventHandler?()
        case .scheduled: self.hasPendingEvent = true
        }
    }

    // MARK: - HMXLink

    public func registerRing(
        port: HMXPort,
        partner: DomainID,
        length: UInt32,
        failIfExists: Bool
    ) -> EventLoopFuture<HMXRing> {
        let promise = self.embeddedLoop.makePromise(of: HMXRing.self)
        // As in LinkState: the hypervisor judges the length, but pages are only
        // allocated for lengths that make sense.
        let pageCount = Int(min(ArgoABI.pagesForRing(length: length), ArgoABI.maximumRingPages))
        guard !self.isClosed else { return self.failed(promise, self.closedError) }
        guard let firstPage = self.pages.allocate(pageCount) else {
            return self.failed(
                promise,
                HMXError(
                    code: .resourceExhausted,
                    message: "no room for a \(length)-byte ring in this domain's ring memory"
                )
            )
        }
        memset(self.memory.base + firstPage * ArgoABI.pageSize, 0, pageCount * ArgoABI.pageSize)
        let request = Request(
            stage: { arguments in
                // Guest frame numbers are page indices into domain memory.
                let frames = (0..<pageCount).lazy.map { UInt64(firstPage + $0) }
                return arguments.registerRing(
                    port: port,
                    partner: partner,
                    length: length,
                    frames: frames,
                    failIfExists: failIfExists
                )
            },
            finish: { [unowned self] rc, _ in
                guard rc >= 0 else {
                    self.pages.release(start: firstPage, count: pageCount)
                    return { promise.fail(Self.error(rc)) }
                }
                let key = RingKey(port: port, partner: partner)
                if let old = self.rings[key] {
                    // Re-registration replaced the old ring's pages.
                    old.markClosed()
                    self.pages.release(start: old.backendToken, count: Int(ArgoABI.pagesForRing(length: old.length)))
                }
                let ring = HMXRing(
                    port: port,
                    partner: partner,
                    length: length,
                    memory: self.memory.base + firstPage * ArgoABI.pageSize,
                    backendToken: firstPage
                )
                self.rings[key] = ring
                return { promise.succeed(ring) }
            },
            fail: { error in promise.fail(error) }
        )
        self.submit(request, size: ArgoArguments.registerRingSize(frameCount: pageCount))
        return promise.futureResult
    }

    public func unregisterRing(_ ring: HMXRing) -> EventLoopFuture<Void> {
        let promise = self.embeddedLoop.makePromise(of: Void.self)
        let request = Request(
            stage: { $0.unregisterRing(port: ring.port, partner: ring.partner) },
            finish: { [unowned self] rc, _ in
                guard rc >= 0 else { return { promise.fail(Self.error(rc)) } }
                let key = RingKey(port: ring.port, partner: ring.partner)
                if self.rings[key] === ring {
                    self.rings[key] = nil
                    ring.markClosed()
                    self.pages.release(start: ring.backendToken, count: Int(ArgoABI.pagesForRing(length: ring.length)))
                }
                return { promise.succeed(()) }
            },
            fail: { error in promise.fail(error) }
        )
        self.submit(request, size: ArgoArguments.unregisterRingSize)
        return promise.futureResult
    }

    public func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer]
    ) -> EventLoopFuture<Int> {
        let promise = self.embeddedLoop.makePromise(of: Int.self)
        guard iovecs.count <= ArgoABI.maximumIOVs else {
            return self.failed(promise, HMXError.argo(.EINVAL, "more than \(ArgoABI.maximumIOVs) iovecs"))
        }
        let domain = self.localDomain
        let request = Request(
            // The payloads are copied into staging only now: ByteBuffers are values.
            stage: { $0.sendv(from: port, sourceDomain: domain, to: destination, type: type, iovecs: iovecs) },
            finish: { rc, _ in
                rc < 0 ? { promise.fail(Self.error(rc)) } : { promise.succeed(Int(rc)) }
            },
            fail: { error in promise.fail(error) }
        )
        self.submit(request, size: ArgoArguments.sendvSize(iovecs: iovecs))
        return promise.futureResult
    }

    /// `resultMayBeLate` changes nothing: results are never late here.
    public func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool
    )
        -> EventLoopFuture<Int>
    {
        self.sendv(from: port, to: destination, type: type, iovecs: iovecs)
    }

    public func notify(_ queries: [HMXNotifyQuery]) -> EventLoopFuture<[HMXNotifyResult]> {
        let promise = self.embeddedLoop.makePromise(of: [HMXNotifyResult].self)
        let request = Request(
            stage: { $0.notify(queries) },
            finish: { rc, arguments in
                guard rc >= 0 else { return { promise.fail(Self.error(rc)) } }
                let results = queries.isEmpty ? [] : arguments.notifyResults(for: queries)
                return { promise.succeed(results) }
            },
            fail: { error in promise.fail(error) }
        )
        self.submit(request, size: ArgoArguments.notifySize(queryCount: queries.count))
        return promise.futureResult
    }

    public func setEventHandler(_ handler: @escaping @Sendable () -> Void) {
        self.embeddedLoop.preconditionInEventLoop()
        self.eventHandler = handler
    }

    /// Detaches: the domain is destroyed in the hypervisor, as when the emulator sees a
    /// domain's connection close.
    public func close() -> EventLoopFuture<Void> {
        if !self.isClosed {
            if let owner = self.owner, owner.link(of: self.localDomain) === self {
                owner.destroy(self.localDomain)
            } else {
                self.closed()
            }
        }
        return self.closeFuture
    }

    // MARK: - Running requests

    private func submit(_ request: Request, size: Int) {
        self.embeddedLoop.preconditionInEventLoop()
        if self.isClosed || self.owner == nil {
            request.fail(self.closedError)
            return
        }
        if size > self.stagingSize {
            request.fail(
                HMXError(code: .resourceExhausted, message: "request of \(size) bytes exceeds the staging area")
            )
            return
        }
        switch self.mode {
        case .immediate: self.execute(request)
        case .scheduled: self.queue.append(request)
        }
    }

    /// Stages the arguments (requests run one at a time, so all use the start of
    /// staging), runs the hypercall and completes the future.
    private func execute(_ request: Request) {
        guard !self.isClosed, let owner = self.owner else {
            request.fail(self.closedError)
            return
        }
        let arguments = ArgoArguments(
            pointer: self.memory.base + self.stagingBase,
            guestAddress: UInt64(self.stagingBase)
        )
        let call = request.stage(arguments)
        let complete = owner.run(self.localDomain, call) { rc in request.finish(rc, arguments) }
        complete()
    }

    /// The domain is gone (called by the hypervisor's owner).
    func closed() {
        guard !self.isClosed else { return }
        self.failAll()
        self.hasPendingEvent = false
        self.closePromise.succeed(())
        // Wake the owner so it notices the closed link; then let go of it (the owner
        // holds this link: the handler would keep both alive).
        self.eventHandler?()
        self.eventHandler = nil
    }

    /// Lets go of the event handler without running it (the hypervisor is going away).
    func dropEventHandler() {
        self.eventHandler = nil
    }

    private func failAll() {
        self.isClosed = true
        let error = self.closedError
        while let request = self.queue.popFirst() { request.fail(error) }
        for ring in self.rings.values { ring.markClosed() }
        self.rings.removeAll()
    }

    private func failed<T>(_ promise: EventLoopPromise<T>, _ error: HMXError) -> EventLoopFuture<T> {
        promise.fail(error)
        return promise.futureResult
    }

    private static func error(_ rc: Int64) -> HMXError {
        HMXError.argo(ArgoErrno(rawValue: Int32(truncatingIfNeeded: -rc)))
    }
}
