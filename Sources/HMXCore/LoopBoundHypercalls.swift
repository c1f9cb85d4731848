// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// The loop-confined half of a link backend: the Argo operations and the event
/// handler, all used only on the link's event loop.
///
/// A backend keeps its mutable state (staging, rings, requests in flight) in one object
/// that conforms to this and is never shared between threads; ``LoopBoundHypercalls``
/// takes callers from any thread to it.
public protocol LoopConfinedLinkState: AnyObject {
    /// Run on the event loop for every event (see ``HMXLink/setEventHandler(_:)``).
    var eventHandler: (@Sendable () -> Void)? { get set }

    /// ``HMXLink/registerRing(port:partner:length:failIfExists:)``, on the loop.
    func registerRing(port: HMXPort, partner: DomainID, length: UInt32, failIfExists: Bool) -> EventLoopFuture<HMXRing>

    /// ``HMXLink/unregisterRing(_:)``, on the loop.
    func unregisterRing(_ ring: HMXRing) -> EventLoopFuture<Void>

    /// ``HMXLink/sendv(from:to:type:iovecs:resultMayBeLate:)``, on the loop. Backends
    /// with synchronous hypercalls ignore `resultMayBeLate`.
    func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool
    )
        -> EventLoopFuture<Int>

    /// ``HMXLink/sendv(from:to:type:iovecs:resultMayBeLate:tag:resultsTo:)``, on the
    /// loop. By default through the future.
    func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool,
        tag: UInt64,
        resultsTo sink: any HMXSendResultSink
    )

    /// ``HMXLink/notify(_:)``, on the loop.
    func notify(_ queries: [HMXNotifyQuery]) -> EventLoopFuture<[HMXNotifyResult]>
}

extension LoopConfinedLinkState {
    public func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool,
        tag: UInt64,
        resultsTo sink: any HMXSendResultSink
    ) {
        let future = self.sendv(
            from: port,
            to: destination,
            type: type,
            iovecs: iovecs,
            resultMayBeLate: resultMayBeLate
        )
        sink.sendCompleted(tag: tag, when: future)
    }
}

#if compiler(>=6.2)
/// `SendableMetatype` where the compiler has it (Swift 6.2 and later), nothing before
/// (the release image builds with 6.1). Calling a generic state's methods inside a
/// `@Sendable` closure captures its metatype, which 6.2 checks.
public typealias HMXSendableMetatype = SendableMetatype
#else
/// `SendableMetatype` where the compiler has it (Swift 6.2 and later), nothing before.
public typealias HMXSendableMetatype = Any
#endif

/// Takes ``HMXLink`` calls from any thread to a ``LoopConfinedLinkState`` on its
/// event loop: at once when the caller is already on the loop (the usual case: the
/// gateway runs there, and a hop would cost a task and reorder nothing), otherwise
/// through `flatSubmit`. Calls from one thread reach the state in the order made.
///
/// Both the emulator and the Xen backends forward ``HMXLink`` to one of these, so
/// that the threading rule is written once.
public struct LoopBoundHypercalls<State: LoopConfinedLinkState & HMXSendableMetatype>: Sendable {
    /// The loop that owns the state.
    public let eventLoop: any EventLoop
    /// The state; `value` may be read only on ``eventLoop`` (checked by NIOLoopBound).
    public let state: NIOLoopBound<State>

    /// - Precondition: called on `eventLoop`.
    public init(_ state: State, eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        self.state = NIOLoopBound(state, eventLoop: eventLoop)
    }

    /// Runs `body` with the state on the event loop and returns its future.
    public func onLoop<T: Sendable>(_ body: @escaping @Sendable (State) -> EventLoopFuture<T>) -> EventLoopFuture<T> {
        if self.eventLoop.inEventLoop {
            return body(self.state.value)
        }
        let state = self.state
        return self.eventLoop.flatSubmit { body(state.value) }
    }

    // MARK: - HMXLink forwarding

    public func registerRing(
        port: HMXPort,
        partner: DomainID,
        length: UInt32,
        failIfExists: Bool
    ) -> EventLoopFuture<HMXRing> {
        self.onLoop { state in
            state.registerRing(port: port, partner: partner, length: length, failIfExists: failIfExists)
        }
    }

    public func unregisterRing(_ ring: HMXRing) -> EventLoopFuture<Void> {
        self.onLoop { state in state.unregisterRing(ring) }
    }

    public func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool
    )
        -> EventLoopFuture<Int>
    {
        self.onLoop { state in
            state.sendv(from: port, to: destination, type: type, iovecs: iovecs, resultMayBeLate: resultMayBeLate)
        }
    }

    /// Tagged sends are made on the loop only: the state is called directly, no
    /// closure or future in between.
    public func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool,
        tag: UInt64,
        resultsTo sink: any HMXSendResultSink
    ) {
        self.state.value.sendv(
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
        self.onLoop { state in state.notify(queries) }
    }

    /// Sets the state's event handler: at once on the loop, otherwise in a task
    /// queued there (events before it runs go to the previous handler).
    public func setEventHandler(_ handler: @escaping @Sendable () -> Void) {
        if self.eventLoop.inEventLoop {
            self.state.value.eventHandler = handler
        } else {
            let state = self.state
            self.eventLoop.execute { state.value.eventHandler = handler }
        }
    }
}
