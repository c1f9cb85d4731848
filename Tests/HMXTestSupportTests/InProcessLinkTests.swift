// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXEmulator
import HMXTestSupport
import NIOCore
import NIOEmbedded
import Synchronization
import Testing

/// The in-process link against the emulator's hypervisor. Every test is synchronous:
/// the EmbeddedEventLoop must stay on the thread that created it.
@Suite("In-process hypervisor and link")
struct InProcessLinkTests {
    static let ringLength = ArgoABI.ringLength(fillingPages: 1)

    @Test func twoDomainsExchangeMessagesThroughPartnerRings() throws {
        let hypervisor = InProcessHypervisor(eventLoop: EmbeddedEventLoop())
        let one = try hypervisor.attach(DomainID(1), name: "one")
        let two = try hypervisor.attach(DomainID(2), name: "two")
        let three = try hypervisor.attach(DomainID(3), name: "three")
        let events = EventCount()
        two.setEventHandler { events.add() }

        let ring = try two.registerRing(port: 100, partner: DomainID(1), length: Self.ringLength, failIfExists: true)
            .value()
        #expect(hypervisor.hypervisor.ringCount(of: DomainID(2)) == 1)
        let sent = try one.sendv(
            from: 7,
            to: HMXAddress(domain: DomainID(2), port: 100),
            type: 5,
            iovecs: [ByteBuffer(string: "hello "), ByteBuffer(string: "world")]
        ).value()
        #expect(sent == 11)
        #expect(events.count == 1)

        var received: [(HMXAddress, UInt32, String)] = []
        try ring.receive { message in
            received.append(
                (message.source, message.header.messageType, String(decoding: message.payloadBytes(), as: UTF8.self))
            )
        }
        #expect(received.count == 1)
        #expect(received.first?.0 == HMXAddress(domain: DomainID(1), port: 7))
        #expect(received.first?.1 == 5)
        #expect(received.first?.2 == "hello world")

        // The ring takes messages from its partner only; there is no wildcard ring.
        let refused = three.send(
            from: 7,
            to: HMXAddress(domain: DomainID(2), port: 100),
            type: 5,
            ByteBuffer(string: "x")
        )
        #expect(refused.argoErrno() == .ECONNREFUSED)
        #expect(events.count == 1)
    }

    /// An event handler may issue hypercalls: events are handed out only after the
    /// hypercall that raised them returned.
    @Test func handlersMayIssueHypercalls() throws {
        let hypervisor = InProcessHypervisor(eventLoop: EmbeddedEventLoop())
        let one = try hypervisor.attach(DomainID(1), name: "one")
        let two = try hypervisor.attach(DomainID(2), name: "two")
        let ringOfOne = try one.registerRing(port: 1, partner: DomainID(2), length: Self.ringLength, failIfExists: true)
            .value()
        let ringOfTwo = try two.registerRing(port: 2, partner: DomainID(1), length: Self.ringLength, failIfExists: true)
            .value()
        // Two echoes every message back and notifies; it runs inside one's sendv call.
        two.setEventHandler {
            _ = try? ringOfTwo.receive { message in
                _ = two.send(from: 2, to: message.source, type: 9, ByteBuffer(bytes: message.payloadBytes()))
            }
            _ = two.notify([])
        }
        for index in 0..<50 {
            let payload = ByteBuffer(string: "ping \(index)")
            #expect(
                try one.send(from: 1, to: HMXAddress(domain: DomainID(2), port: 2), type: 1, payload).value()
                    == payload.readableBytes
            )
            var echoes: [String] = []
            try ringOfOne.receive { echoes.append(String(decoding: $0.payloadBytes(), as: UTF8.self)) }
            #expect(echoes == ["ping \(index)"])
        }
    }

    @Test func fullRingGivesEAGAINAndTheSenderAnEventOnceDrainedAndNotified() throws {
        let hypervisor = InProcessHypervisor(eventLoop: EmbeddedEventLoop())
        let sender = try hypervisor.attach(DomainID(1), name: "sender")
        let receiver = try hypervisor.attach(DomainID(2), name: "receiver")
        let senderEvents = EventCount()
        sender.setEventHandler { senderEvents.add() }
        let ring = try receiver.registerRing(port: 100, partner: DomainID(1), length: 256, failIfExists: true).value()
        let destination = HMXAddress(domain: DomainID(2), port: 100)
        let payload = ByteBuffer(repeating: 0x5A, count: 100)

        var accepted = 0
        var lastError: ArgoErrno?
        while lastError == nil, accepted < 10 {
            let result = sender.send(from: 1, to: destination, type: 0, payload)
            if let errno = result.argoErrno() { lastError = errno } else { accepted += 1 }
        }
        #expect(accepted >= 1)
        #expect(lastError == .EAGAIN)
        #expect(hypervisor.hypervisor.pendingCount(owner: DomainID(2), port: 100, partner: DomainID(1)) == 1)
        #expect(senderEvents.count == 0)

        // Draining alone wakes nobody: the receiver must notify.
        #expect(try ring.receive { _ in } == accepted)
        #expect(senderEvents.count == 0)
        #expect(try receiver.notify([]).value() == [])
        #expect(senderEvents.count == 1)
        #expect(hypervisor.hypervisor.pendingCount(owner: DomainID(2), port: 100, partner: DomainID(1)) == 0)
        #expect(try sender.send(from: 1, to: destination, type: 0, payload).value() == 100)
    }

    @Test func scheduledRequestsRunOnlyWhenAskedAndInOrder() throws {
        let hypervisor = InProcessHypervisor(eventLoop: EmbeddedEventLoop())
        let one = try hypervisor.attach(DomainID(1), name: "one", mode: .scheduled)
        let two = try hypervisor.attach(DomainID(2), name: "two", mode: .scheduled)
        let events = EventCount()
        two.setEventHandler { events.add() }

        let registered = two.registerRing(port: 100, partner: DomainID(1), length: Self.ringLength, failIfExists: true)
        #expect(registered.peek() == nil)
        #expect(hypervisor.hypervisor.ringCount(of: DomainID(2)) == 0)
        #expect(two.runNextRequest())
        let ring = try registered.value()

        let destination = HMXAddress(domain: DomainID(2), port: 100)
        let first = one.send(from: 1, to: destination, type: 0, ByteBuffer(string: "first"))
        let second = one.send(from: 1, to: destination, type: 0, ByteBuffer(string: "second"))
        let query = one.notify([HMXNotifyQuery(ring: destination, spaceRequired: 16)])
        #expect(one.pendingRequests == 3)
        #expect(first.peek() == nil && second.peek() == nil && query.peek() == nil)
        #expect(!ring.hasMessages)

        #expect(one.runNextRequest())
        #expect(try first.value() == 5)
        #expect(second.peek() == nil)
        #expect(one.runNextRequest())
        #expect(try second.value() == 6)
        #expect(one.runNextRequest())
        let flags = try query.value().first?.flags ?? []
        #expect(flags.contains(.exists) && flags.contains(.sufficient))
        #expect(!one.runNextRequest())
        #expect(one.pendingRequests == 0)

        // Two messages raised two events: one pending, delivered only when asked.
        #expect(two.hasPendingEvent)
        #expect(events.count == 0)
        #expect(two.deliverEvent())
        #expect(events.count == 1)
        #expect(!two.deliverEvent())
        var order: [String] = []
        try ring.receive { order.append(String(decoding: $0.payloadBytes(), as: UTF8.self)) }
        #expect(order == ["first", "second"])
    }

    @Test func destroyClosesTheLinkAndRemovesPartnerRings() throws {
        let hypervisor = InProcessHypervisor(eventLoop: EmbeddedEventLoop())
        let one = try hypervisor.attach(DomainID(1), name: "one")
        let two = try hypervisor.attach(DomainID(2), name: "two", mode: .scheduled)
        let events = EventCount()
        two.setEventHandler { events.add() }
        let registered = two.registerRing(port: 100, partner: DomainID(1), length: Self.ringLength, failIfExists: true)
        two.runAllRequests()
        let ringOfTwo = try registered.value()
        _ = try one.registerRing(port: 200, partner: DomainID(2), length: Self.ringLength, failIfExists: true).value()
        #expect(hypervisor.hypervisor.ringCount(of: DomainID(1)) == 1)

        let held = two.send(
            from: 100,
            to: HMXAddress(domain: DomainID(1), port: 200),
            type: 0,
            ByteBuffer(string: "late")
        )
        #expect(two.pendingRequests == 1)
        hypervisor.destroy(DomainID(2))

        #expect(held.hmxError()?.code == .linkClosed)
        #expect(two.closeFuture.peek() != nil)
        #expect(two.isClosed && two.pendingRequests == 0)
        #expect(events.count == 1)
        #expect(ringOfTwo.isClosed)
        #expect(two.notify([]).hmxError()?.code == .linkClosed)
        #expect(hypervisor.link(of: DomainID(2)) == nil)
        // Argo destroyed one's ring that named two as partner.
        #expect(hypervisor.hypervisor.ringCount(of: DomainID(1)) == 0)
        #expect(
            one.send(from: 200, to: HMXAddress(domain: DomainID(2), port: 100), type: 0, ByteBuffer()).argoErrno()
                == .ESRCH
        )

        // A restart: the same id, a fresh link; one's ring for it is gone.
        let restarted = try hypervisor.attach(DomainID(2), name: "two")
        #expect(hypervisor.link(of: DomainID(2)) === restarted)
        #expect(!restarted.isClosed)
        let refused = restarted.send(
            from: 100,
            to: HMXAddress(domain: DomainID(1), port: 200),
            type: 0,
            ByteBuffer(string: "x")
        )
        #expect(refused.argoErrno() == .ECONNREFUSED)
        #expect(events.count == 1)

        // close() is a destroy too.
        #expect(restarted.close().peek() != nil)
        #expect(hypervisor.link(of: DomainID(2)) == nil)
        #expect(!hypervisor.hypervisor.domainExists(DomainID(2)))
    }

    /// A test that forgets to close still gets its futures completed (NIO would treat
    /// an uncompleted promise as a leak and trap).
    @Test func droppedHypervisorFailsHeldRequests() throws {
        let eventLoop = EmbeddedEventLoop()
        var held: EventLoopFuture<Int>?
        var closed: EventLoopFuture<Void>?
        do {
            let hypervisor = InProcessHypervisor(eventLoop: eventLoop)
            let one = try hypervisor.attach(DomainID(1), name: "one", mode: .scheduled)
            held = one.send(from: 1, to: HMXAddress(domain: DomainID(2), port: 2), type: 0, ByteBuffer(string: "never"))
            closed = one.closeFuture
        }
        #expect(held?.hmxError()?.code == .linkClosed)
        #expect(closed?.peek() != nil)
    }
}

// MARK: - Helpers

/// Counts handler calls; the handler must be `@Sendable`.
final class EventCount: Sendable {
    private let value = Mutex(0)
    func add() { self.value.withLock { $0 += 1 } }
    var count: Int { self.value.withLock { $0 } }
}

struct NotCompleted: Error {}

extension EventLoopFuture {
    /// The result if the future has completed (on the embedded loop, at once).
    func peek() -> Result<Value, any Error>? {
        var result: Result<Value, any Error>?
        self.assumeIsolated().whenComplete { result = $0 }
        return result
    }

    func value() throws -> Value {
        guard let result = self.peek() else { throw NotCompleted() }
        return try result.get()
    }

    func hmxError() -> HMXError? {
        guard case .failure(let error) = self.peek() else { return nil }
        return error as? HMXError
    }

    func argoErrno() -> ArgoErrno? {
        self.hmxError()?.errno
    }
}
