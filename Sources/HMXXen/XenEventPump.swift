// SPDX-License-Identifier: Apache-2.0
import CXenArgo
import HMXCore
import NIOCore
import NIOPosix
import Synchronization

/// Delivers VIRQ_ARGO to an event loop.
///
/// The event channel is bound through libxenevtchn, which keeps owning its file
/// descriptor. A dedicated thread (a one-thread ``NIOThreadPool``) waits on that
/// descriptor with `poll()` in slices of at most ``pollSliceMilliseconds`` and hops onto
/// the event loop; the loop itself never blocks. We chose a thread over handing the fd
/// to NIO (`NIOPipeBootstrap`) because NIO would take ownership of the descriptor and
/// close it while libxenevtchn still uses it for unbind/unmask, and NIO's reads would
/// have to be parsed as 4-byte port numbers and unmasked from a channel handler; one
/// thread per link is cheap and keeps the ownership simple.
///
/// Each delivered port is unmasked *before* the handler is scheduled, so an event that
/// arrives while the handler scans the rings fires again: no wake-up is lost. Events
/// that arrive while a handler run is already scheduled are coalesced into it.
final class XenEventPump: Sendable {
    static let pollSliceMilliseconds: Int32 = 500

    private let events: EventsHandle
    private let pool: NIOThreadPool
    private let stopped = Atomic<Bool>(false)
    private let scheduled = Atomic<Bool>(false)
    private let finished: EventLoopPromise<Void>

    /// Binds VIRQ_ARGO. Throws the errno (EEXIST: another Argo user in this domain).
    init(eventLoop: any EventLoop, handler: @escaping @Sendable () -> Void) throws(XenErrnoError) {
        var pointer: OpaquePointer?
        let rc = cxa_events_open(&pointer, ArgoABI.virqArgo)
        guard rc == 0, let pointer else { throw XenErrnoError(errno: ArgoErrno(rawValue: -rc)) }
        self.events = EventsHandle(pointer)
        self.pool = NIOThreadPool(numberOfThreads: 1)
        self.finished = eventLoop.makePromise()
        self.pool.start()
        let events = self.events
        let finished = self.finished
        self.pool.submit { [self] state in
            guard case .active = state else {
                // The pool was shut down before the work ran: nothing was pumped.
                finished.succeed(())
                return
            }
            while !self.stopped.load(ordering: .acquiring) {
                let fired = cxa_events_wait(events.pointer, Self.pollSliceMilliseconds)
                if fired < 0 {
                    // The evtchn device failed: report once and stop pumping.
                    finished.fail(
                        HMXError(
                            code: .unavailable,
                            message: "event channel wait failed: \(ArgoErrno(rawValue: -fired).name)"
                        )
                    )
                    return
                }
                if fired == 1, !self.scheduled.exchange(true, ordering: .acquiringAndReleasing) {
                    eventLoop.execute {
                        self.scheduled.store(false, ordering: .releasing)
                        handler()
                    }
                }
            }
            finished.succeed(())
        }
    }

    /// Fails if the event channel broke (the pump then stopped); succeeds after ``stop()``.
    var done: EventLoopFuture<Void> { self.finished.futureResult }

    /// Stops the thread (bounded by one poll slice) and unbinds the VIRQ. Idempotent:
    /// only the first call wakes the thread. Must run on the event loop, where the
    /// handle is closed (after ``done``), so the wake-up never touches a closed handle.
    func stop() -> EventLoopFuture<Void> {
        if !self.stopped.exchange(true, ordering: .acquiringAndReleasing) {
            cxa_events_wake(self.events.pointer)
        }
        let events = self.events
        let pool = self.pool
        return self.finished.futureResult.recover { _ in }.always { _ in
            events.close()
            pool.shutdownGracefully { _ in }
        }
    }
}

/// The `cxa_events` handle; closed exactly once, after the pump thread has finished.
private final class EventsHandle: Sendable {
    // The pointer is only used by the pump thread, then closed after it finished.
    nonisolated(unsafe) let pointer: OpaquePointer
    private let closed = Atomic<Bool>(false)

    init(_ pointer: OpaquePointer) { self.pointer = pointer }

    func close() {
        if !self.closed.exchange(true, ordering: .acquiringAndReleasing) {
            cxa_events_close(self.pointer)
        }
    }
}
