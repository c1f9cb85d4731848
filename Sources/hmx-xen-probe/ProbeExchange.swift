// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXXen
import NIOCore
import Synchronization

/// The checks of hmx-xen-probe, on an open ``XenLink``.
struct ProbeExchange {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// A message read from a ring, copied out of it.
    struct Received: Sendable {
        var source: HMXAddress
        var type: UInt32
        var payload: [UInt8]
    }

    static let messageType: UInt32 = 0x484D_5850  // "PXMH"

    let link: XenLink
    let port: UInt32
    let ringLength: UInt32
    let timeout: TimeAmount

    /// Ring with partner = this domain, send to ourselves, read back, check the stamp.
    func loopback() async throws {
        let me = self.link.localDomain
        let ring = try await self.link.registerRing(
            port: self.port,
            partner: me,
            length: self.ringLength,
            failIfExists: false
        ).get()
        print("registered ring port \(hex(self.port)) partner \(me) length \(self.ringLength)")
        let inbox = Inbox(link: self.link, ring: ring)
        // Armed before sending, so the message is found through VIRQ_ARGO.
        let arrival = inbox.expect(within: self.timeout)
        let text = "hello from domain \(me) to itself"
        let sent = try await self.link.send(
            from: self.port &+ 1,
            to: HMXAddress(domain: me, port: self.port),
            type: Self.messageType,
            ByteBuffer(string: text)
        ).get()
        print("sendv -> \(sent) bytes")
        let message = try await arrival.get()
        try self.check(message, from: me, expectedPayload: text, expectedSourcePort: self.port &+ 1)
        try await self.link.unregisterRing(ring).get()
        print("unregistered ring")
    }

    /// Both domains register a ring for the other, send to it (retrying while the
    /// other's ring does not exist yet) and wait for the other's message.
    func exchange(with peer: DomainID) async throws {
        let me = self.link.localDomain
        let ring = try await self.link.registerRing(
            port: self.port,
            partner: peer,
            length: self.ringLength,
            failIfExists: false
        ).get()
        print("registered ring port \(hex(self.port)) partner \(peer) length \(self.ringLength)")
        let inbox = Inbox(link: self.link, ring: ring)
        let arrival = inbox.expect(within: self.timeout)
        let text = "hello from domain \(me) to domain \(peer)"
        let deadline = NIODeadline.now() + self.timeout
        var tries = 0
        while true {
            tries += 1
            do {
                let sent = try await self.link.send(
                    from: self.port,
                    to: HMXAddress(domain: peer, port: self.port),
                    type: Self.messageType,
                    ByteBuffer(string: text)
                ).get()
                print("sendv to \(peer):\(hex(self.port)) -> \(sent) bytes after \(tries) tries")
                break
            } catch let error as HMXError where error.errno == .ECONNREFUSED || error.errno == .ESRCH {
                // The peer's ring is not there yet.
                guard NIODeadline.now() < deadline else {
                    throw Failure(description: "peer \(peer) never registered its ring: \(error)")
                }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
        }
        let message = try await arrival.get()
        try self.check(
            message,
            from: peer,
            expectedPayload: "hello from domain \(peer) to domain \(me)",
            expectedSourcePort: self.port
        )
        try await self.link.unregisterRing(ring).get()
        print("unregistered ring")
    }

    private func check(
        _ message: Received,
        from expected: DomainID,
        expectedPayload: String,
        expectedSourcePort: UInt32
    ) throws {
        let payload = String(decoding: message.payload, as: UTF8.self)
        print(
            "received: src=\(message.source.domain):\(hex(message.source.port)) type=\(hex(message.type)) len=\(message.payload.count) data='\(payload)'"
        )
        guard message.source.domain == expected else {
            throw Failure(description: "source domain \(message.source.domain) stamped by Xen, expected \(expected)")
        }
        print("source check: stamped domid \(message.source.domain) == expected \(expected)")
        guard message.type == Self.messageType, payload == expectedPayload, message.source.port == expectedSourcePort
        else {
            throw Failure(description: "unexpected message (type \(hex(message.type)), payload '\(payload)')")
        }
    }
}

/// Waits for messages on one ring, woken by the link's events (VIRQ_ARGO).
final class Inbox: Sendable {
    private let link: XenLink
    private let ring: HMXRing

    init(link: XenLink, ring: HMXRing) {
        self.link = link
        self.ring = ring
    }

    /// The next message, read as soon as an event (VIRQ_ARGO) says it arrived, or
    /// at once if one is already waiting; fails after `timeout`.
    func expect(within timeout: TimeAmount) -> EventLoopFuture<ProbeExchange.Received> {
        let loop = self.link.eventLoop
        let promise = loop.makePromise(of: ProbeExchange.Received.self)
        let ring = self.ring
        let link = self.link
        let done = OnceFlag()
        @Sendable func drain(_ why: String) {
            guard !done.isSet else { return }
            do {
                var got: ProbeExchange.Received?
                try ring.receive(limit: 1) { message in
                    got = ProbeExchange.Received(
                        source: message.source,
                        type: message.header.messageType,
                        payload: message.payloadBytes()
                    )
                }
                if let got, done.claim() {
                    print("woken by \(why)")
                    // Tell Xen we consumed: wakes senders waiting for space.
                    link.notify([]).whenComplete { _ in }
                    promise.succeed(got)
                }
            } catch {
                if done.claim() { promise.fail(error) }
            }
        }
        loop.execute {
            link.setEventHandler { drain("VIRQ_ARGO event") }
            drain("a message already waiting")
        }
        let timer = loop.scheduleTask(in: timeout) {
            guard done.claim() else { return }
            promise.fail(
                ProbeExchange.Failure(description: "no message within \(timeout.nanoseconds / 1_000_000_000) s")
            )
        }
        return promise.futureResult.always { _ in
            timer.cancel()
            link.setEventHandler {}
        }
    }
}

/// Completes something exactly once, whichever of several paths gets there first.
final class OnceFlag: Sendable {
    private let flag = Atomic<Bool>(false)

    var isSet: Bool { self.flag.load(ordering: .acquiring) }

    /// True for the first caller only.
    func claim() -> Bool { !self.flag.exchange(true, ordering: .acquiringAndReleasing) }
}

func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
