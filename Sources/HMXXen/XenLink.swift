// SPDX-License-Identifier: Apache-2.0
import CXenArgo
import HMXCore
import NIOCore
import NIOPosix
import Synchronization

/// An ``HMXLink`` to real Xen Argo, driven from user space.
///
/// * Hypercalls go through `/dev/xen/privcmd` (libxencall). Their arguments *and the
///   payloads* are staged in hypercall-safe buffers (`xencall_alloc_buffer_pages`,
///   backed by `/dev/xen/hypercall`), because Xen reads them by virtual address and
///   does not fault pages in.
/// * Ring memory consists of frames that never move (see ``XenFrameMethod``). On PV
///   they are fresh machine frames from `XENMEM_increase_reservation` that Linux never
///   owns, so a crash cannot hand them to anything else while Xen still writes there.
/// * VIRQ_ARGO is bound with libxenevtchn and pumped onto ``eventLoop`` by
///   ``XenEventPump``.
///
/// Hypercalls are short, non-blocking ioctls; they run on ``eventLoop`` and futures
/// complete there, as with the emulator backend. Only one Argo user may exist per
/// domain (VIRQ_ARGO binds once; ring ids are per domain).
public final class XenLink: HMXRawHypercalls, @unchecked Sendable {
    // @unchecked: all mutable state is in the XenLinkState behind `hypercalls`, confined
    // to `eventLoop` by NIOLoopBound; `scratchFrames` is behind a Mutex; the rest is
    // immutable.

    public struct Configuration: Sendable {
        /// Pages of hypercall-safe staging for arguments and payloads. Larger requests
        /// get a temporary buffer.
        public var stagingPages: Int
        /// This domain's id if known; otherwise it is read from xenstore (0 in dom0).
        public var localDomain: DomainID?
        /// Bind VIRQ_ARGO (turn off only for tools that poll).
        public var bindEvents: Bool

        public init(stagingPages: Int = 16, localDomain: DomainID? = nil, bindEvents: Bool = true) {
            self.stagingPages = stagingPages
            self.localDomain = localDomain
            self.bindEvents = bindEvents
        }
    }

    public let eventLoop: any EventLoop
    public let localDomain: DomainID
    /// The guest type reported by Linux ("PV", "HVM", "PVH" or "unknown").
    public let guestType: String
    /// How ring frames are obtained in this guest.
    public let frameMethod: XenFrameMethod
    /// Takes every operation to the loop-confined ``XenLinkState``.
    let hypercalls: LoopBoundHypercalls<XenLinkState>
    private let pump: XenEventPump?
    private let closePromise: EventLoopPromise<Void>
    private let scratchFrames = ScratchRegistry()

    public var closeFuture: EventLoopFuture<Void> { self.closePromise.futureResult }

    /// Opens the link. Fails with ``HMXError/Code/unavailable`` and a diagnosis (see
    /// ``probe()``) if Argo cannot be used here.
    public static func open(
        configuration: Configuration = Configuration(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> XenLink {
        let probe = XenProbe.run()
        guard probe.status == .usable else {
            throw HMXError(code: .unavailable, message: probe.summary)
        }
        let eventLoop = group.next()
        return try await eventLoop.submit {
            try XenLink(configuration: configuration, eventLoop: eventLoop, probedDomain: probe.localDomain)
        }.get()
    }

    private init(configuration: Configuration, eventLoop: any EventLoop, probedDomain: DomainID?) throws {
        let hypervisor: XenHypervisor
        do {
            hypervisor = try XenHypervisor()
        } catch {
            let name = ArgoErrno(rawValue: error.errno).name
            throw HMXError(
                code: .unavailable,
                message: "cannot open Xen's hypercall interface (\(name)): \(error.message)"
            )
        }
        guard let domain = configuration.localDomain ?? probedDomain else {
            throw HMXError(
                code: .unavailable,
                message: "cannot learn this domain's id (xenstore \"domid\"); pass it explicitly"
            )
        }
        let stagingPages = max(1, configuration.stagingPages)
        guard let staging = hypervisor.allocateBuffer(pages: stagingPages) else {
            throw HMXError(code: .resourceExhausted, message: "cannot allocate \(stagingPages) hypercall buffer pages")
        }
        self.eventLoop = eventLoop
        self.localDomain = domain
        self.guestType = hypervisor.guestType
        self.frameMethod = hypervisor.frameMethod
        self.closePromise = eventLoop.makePromise()
        let state = XenLinkState(
            hypervisor: hypervisor,
            eventLoop: eventLoop,
            staging: staging,
            stagingPages: stagingPages
        )
        self.hypercalls = LoopBoundHypercalls(state, eventLoop: eventLoop)
        let bound = self.hypercalls.state
        if configuration.bindEvents {
            do {
                self.pump = try XenEventPump(eventLoop: eventLoop) {
                    bound.value.eventHandler?()
                }
            } catch {
                state.shutdown()
                throw HMXError(
                    code: .unavailable,
                    errno: error.errno,
                    message: error.errno == .EEXIST
                        ? "VIRQ_ARGO is already bound in this domain (xen-argo.ko or another gateway)"
                        : "cannot bind VIRQ_ARGO on /dev/xen/evtchn: \(error.errno.name)"
                )
            }
        } else {
            self.pump = nil
        }
        self.pump?.done.whenFailure { [weak self] _ in _ = self?.close() }
    }

    // MARK: - HMXLink

    public func registerRing(
        port: HMXPort,
        partner: DomainID,
        length: UInt32,
        failIfExists: Bool
    ) -> EventLoopFuture<HMXRing> {
        self.hypercalls.registerRing(port: port, partner: partner, length: length, failIfExists: failIfExists)
    }

    public func unregisterRing(_ ring: HMXRing) -> EventLoopFuture<Void> {
        self.hypercalls.unregisterRing(ring)
    }

    public func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer]
    ) -> EventLoopFuture<Int> {
        self.hypercalls.sendv(from: port, to: destination, type: type, iovecs: iovecs, resultMayBeLate: false)
    }

    public func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool,
        tag: UInt64,
        resultsTo sink: any HMXSendResultSink
    ) {
        self.hypercalls.sendv(
            from: port,
            to: destination,
            type: type,
            iovecs: iovecs,
            resultMayBeLate: resultMayBeLate,
            tag: tag,
            resultsTo: sink
        )
    }

    public func notify(_ queries: [HMXNotifyQuery]) -> EventLoopFuture<[HMXNotifyResult]> {
        self.hypercalls.notify(queries)
    }

    public func setEventHandler(_ handler: @escaping @Sendable () -> Void) {
        self.hypercalls.setEventHandler(handler)
    }

    /// Unregisters every ring, returns their frames, unbinds VIRQ_ARGO and closes
    /// privcmd. Idempotent.
    public func close() -> EventLoopFuture<Void> {
        let state = self.hypercalls.state
        let pump = self.pump
        let promise = self.closePromise
        let scratch = self.scratchFrames
        self.eventLoop.execute {
            // isClosed is set by shutdown(), which runs only after the pump stopped;
            // isClosing makes a second close() (e.g. the pump's failure path racing an
            // explicit close) a no-op instead of stopping the pump twice.
            guard !state.value.isClosed, !state.value.isClosing else { return }
            state.value.isClosing = true
            let stopped = pump?.stop() ?? state.value.eventLoop.makeSucceededVoidFuture()
            stopped.whenComplete { _ in
                state.value.shutdown()
                scratch.frames.withLock { $0.removeAll() }
                promise.succeed(())
            }
        }
        return promise.futureResult
    }

    // MARK: - HMXRawHypercalls

    public func rawHypercall(
        command: UInt32,
        arg1: UInt64,
        arg2: UInt64,
        arg3: UInt64,
        arg4: UInt64
    ) -> EventLoopFuture<Int64> {
        self.hypercalls.onLoop { state in state.raw(command: command, arg1: arg1, arg2: arg2, arg3: arg3, arg4: arg4) }
    }

    /// Ring-capable frames, mapped contiguously; they stay valid until ``close()``.
    public func allocateScratch(pages: Int) -> EventLoopFuture<HMXScratch> {
        let scratchFrames = self.scratchFrames
        return self.hypercalls.onLoop { state in
            state.allocateScratch(pages: pages).map { scratch, frames in
                scratchFrames.frames.withLock { $0[UInt(bitPattern: scratch.pointer)] = frames }
                return scratch
            }
        }
    }

    public func releaseScratch(_ scratch: HMXScratch) {
        let scratchFrames = self.scratchFrames
        let pointer = UInt(bitPattern: scratch.pointer)
        _ = self.hypercalls.onLoop { state in
            scratchFrames.frames.withLock { _ = $0.removeValue(forKey: pointer) }
            state.releaseScratch(at: UnsafeMutableRawPointer(bitPattern: pointer)!)
            return state.eventLoop.makeSucceededVoidFuture()
        }
    }

    public func frameNumbers(of scratch: HMXScratch) -> [UInt64] {
        self.scratchFrames.frames.withLock { $0[UInt(bitPattern: scratch.pointer)] ?? [] }
    }

    /// Guest addresses are this process's virtual addresses; page 0 is never mapped.
    public var invalidGuestAddress: UInt64 { 16 }

    // MARK: - Probe

    /// Diagnoses whether Argo is usable from this process, without side effects on
    /// rings (one NULL notify, which only wakes waiting senders).
    public static func probe() -> XenProbe.Result {
        XenProbe.run()
    }

    /// The number of pages this domain holds now (`XENMEM_current_reservation`, Xen's
    /// tot_pages), through a handle of its own. Ring and scratch frames count here, so
    /// comparing it before and after shows whether every frame was given back.
    /// - Returns: nil if privcmd cannot be opened or Xen refuses.
    public static func currentReservationPages() -> Int? {
        guard let hypervisor = try? XenHypervisor() else { return nil }
        let pages = hypervisor.currentReservation()
        return pages >= 0 ? pages : nil
    }
}

/// Frame numbers of scratch allocations, readable from any thread.
private final class ScratchRegistry: Sendable {
    let frames = Mutex<[UInt: [UInt64]]>([:])
}
