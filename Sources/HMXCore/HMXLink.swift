// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// A query or result of the Argo notify operation for one remote ring.
public struct HMXNotifyQuery: Hashable, Sendable {
    /// The remote ring: its owner domain and port.
    public var ring: HMXAddress
    /// Payload bytes the caller wants to send (0 = existence check only).
    public var spaceRequired: UInt32

    public init(ring: HMXAddress, spaceRequired: UInt32) {
        self.ring = ring
        self.spaceRequired = spaceRequired
    }
}

/// What notify reported for one ``HMXNotifyQuery``.
public struct HMXNotifyResult: Hashable, Sendable {
    public var ring: HMXAddress
    public var flags: ArgoABI.RingFlags
    /// Largest payload the ring can ever take (valid when `flags` contains `.exists`).
    public var maxMessageSize: UInt32

    public init(ring: HMXAddress, flags: ArgoABI.RingFlags, maxMessageSize: UInt32) {
        self.ring = ring
        self.flags = flags
        self.maxMessageSize = maxMessageSize
    }
}

/// The Argo operations, independent of the backend (emulator or real Xen).
///
/// All methods may be called from any thread; they never block the caller. Results
/// complete on ``eventLoop``, which is also where the event handler runs. Errors are
/// ``HMXError`` values; an Argo errno is in ``HMXError/errno``.
///
/// - Important: after draining a ring, call ``notify(_:)`` (an empty query list is
///   Argo's NULL notify): only then are senders that got EAGAIN woken.
public protocol HMXLink: AnyObject, Sendable {
    /// The loop on which futures complete and events are delivered.
    var eventLoop: any EventLoop { get }
    /// This domain's id, as the hypervisor knows it.
    var localDomain: DomainID { get }

    /// Registers a receive ring (`register_ring`).
    /// - Parameters:
    ///   - port: the ring's Argo port.
    ///   - partner: the only domain allowed to send here, or ``DomainID/any`` for a
    ///     wildcard ring (needs the hypervisor's mac-permissive setting).
    ///   - length: data length in bytes (multiple of 16, 48 ... 0xFFFFC0).
    ///   - failIfExists: `XEN_ARGO_REGISTER_FLAG_FAIL_EXIST`.
    func registerRing(port: HMXPort, partner: DomainID, length: UInt32, failIfExists: Bool) -> EventLoopFuture<HMXRing>

    /// Unregisters a ring (`unregister_ring`); its memory is released afterwards.
    func unregisterRing(_ ring: HMXRing) -> EventLoopFuture<Void>

    /// Sends one message gathered from up to 8 buffers (`sendv`).
    /// - Returns: the payload bytes written. EAGAIN means the ring is full and a
    ///   wake-up event has been queued for this domain.
    func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer]
    ) -> EventLoopFuture<Int>

    /// `sendv` for a caller that does not wait for the result: a backend whose
    /// hypercalls are round trips to another process (the emulator) may report a
    /// success a little late, and in exchange wake the caller less often. Failures are
    /// never late. Backends with synchronous hypercalls (Xen) ignore the hint.
    func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool
    )
        -> EventLoopFuture<Int>

    /// `sendv` without a future, for a caller on ``eventLoop`` that sends many
    /// messages: the result goes to `sink` with `tag`, on ``eventLoop``, maybe before
    /// this returns (a backend with synchronous hypercalls, or a request refused at
    /// once). A backend built for it saves each send's promise, future and callback;
    /// the default goes through the future.
    /// - Precondition: called on ``eventLoop``.
    func sendv(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer],
        resultMayBeLate: Bool,
        tag: UInt64,
        resultsTo sink: any HMXSendResultSink
    )
    /// Argo notify: wakes senders waiting on this domain's rings and reports on the
    /// given remote rings (an empty list is the NULL notify).
    func notify(_ queries: [HMXNotifyQuery]) -> EventLoopFuture<[HMXNotifyResult]>

    /// Sets the handler run on ``eventLoop`` for every event (VIRQ_ARGO): data arrived
    /// on some ring, or some ring this domain waited on may have space.
    func setEventHandler(_ handler: @escaping @Sendable () -> Void)

    /// Detaches from the hypervisor; rings are unregistered.
    func close() -> EventLoopFuture<Void>

    /// Completes when the link is closed, by ``close()`` or because the hypervisor
    /// side went away (then every outstanding operation has failed with
    /// ``HMXError/Code/linkClosed``).
    var closeFuture: EventLoopFuture<Void> { get }
}

/// Where the results of tagged sends go
/// (``HMXLink/sendv(from:to:type:iovecs:resultMayBeLate:tag:resultsTo:)``): an object
/// confined to the link's event loop.
public protocol HMXSendResultSink: AnyObject {
    /// The send tagged `tag` completed: the payload bytes written, or why not.
    func sendCompleted(tag: UInt64, _ result: Result<Int, HMXError>)
}

extension HMXSendResultSink {
    /// Reports `future`'s result as the send tagged `tag` (a backend without tagged
    /// sends of its own). Called on the future's event loop.
    public func sendCompleted(tag: UInt64, when future: EventLoopFuture<Int>) {
        future.assumeIsolated().whenComplete { result in
            self.sendCompleted(tag: tag, result.mapError(HMXError.init(wrapping:)))
        }
    }
}

/// A receive ring registered through an ``HMXLink``.
///
/// Reading is single-consumer: use one ring from one thread at a time (normally the
/// link's event loop). The memory stays valid until the ring is unregistered.
public final class HMXRing: @unchecked Sendable {
    // @unchecked: the reader state is only touched by the single consumer (see above);
    // the mapped memory is owned by the link and outlives the registration.
    public let port: HMXPort
    public let partner: DomainID
    public let length: UInt32
    /// Backend-specific handle (e.g. the pages to release).
    public let backendToken: Int
    private var reader: RingReader
    /// Set once the ring has been unregistered; reading then returns nothing.
    public private(set) var isClosed = false

    public init(port: HMXPort, partner: DomainID, length: UInt32, memory: UnsafeMutableRawPointer, backendToken: Int) {
        self.port = port
        self.partner = partner
        self.length = length
        self.backendToken = backendToken
        self.reader = RingReader(base: memory, length: length)
    }

    /// The largest payload one message can carry on this ring.
    public var maximumMessageSize: UInt32 { ArgoABI.maximumPayload(ringLength: self.length) }

    /// Bytes of the ring holding messages not yet received.
    public var usedBytes: UInt32 { self.isClosed ? 0 : self.reader.usedBytes }

    /// True if a message is waiting.
    public var hasMessages: Bool { !self.isClosed && !self.reader.isEmpty }

    /// Hands up to `limit` messages to `body`, consuming each after `body` returns.
    /// The payload pointers are valid only inside `body`.
    /// - Returns: the number of messages consumed.
    /// - Throws: ``RingReader/Corruption`` if the ring is inconsistent; the ring has
    ///   then been flushed.
    @discardableResult
    public func receive(limit: Int = .max, _ body: (RingReader.Message) throws -> Void) throws -> Int {
        var count = 0
        while count < limit, !self.isClosed {
            let message: RingReader.Message?
            do {
                message = try self.reader.peek()
            } catch {
                self.reader.flush()
                throw error
            }
            guard let message else { break }
            defer { self.reader.consume(message) }
            count += 1
            try body(message)
        }
        return count
    }

    /// The sender of the next message, without consuming it; nil if none waits.
    /// - Throws: ``RingReader/Corruption`` as ``receive(limit:_:)`` does.
    public func nextSender() throws -> DomainID? {
        guard !self.isClosed else { return nil }
        do {
            return try self.reader.peek().map { DomainID($0.header.source.domain) }
        } catch {
            self.reader.flush()
            throw error
        }
    }

    /// Marks the ring unusable (called by the backend when it is unregistered).
    public func markClosed() {
        self.isClosed = true
    }
}

extension HMXLink {
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

    /// Sends one buffer as one message.
    public func send(
        from port: HMXPort,
        to destination: HMXAddress,
        type: UInt32,
        _ payload: ByteBuffer
    ) -> EventLoopFuture<Int> {
        self.sendv(from: port, to: destination, type: type, iovecs: [payload])
    }
}

extension HMXLink {
    /// The link's events as an async sequence (replaces any event handler). Events are
    /// coalesced: one buffered element stands for "at least one event since you last
    /// looked", which is all VIRQ_ARGO means.
    public func events() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.setEventHandler { continuation.yield() }
        self.closeFuture.whenComplete { _ in continuation.finish() }
        return stream
    }
}
