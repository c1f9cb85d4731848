// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore
import Testing

@testable import HMXEmulator

/// The attach handshakes as a plain value: slots are per domain socket, every
/// handshake has its own deadline, and the poll timeout follows the earliest one.
@Suite("Attach handshakes")
struct AttachHandshakesTests {
    static func domain(_ id: UInt16) -> EmulatorConfig.DomainEntry {
        EmulatorConfig.DomainEntry(
            id: DomainID(id),
            name: "d\(id)",
            socketPath: "/d\(id)",
            uid: nil,
            argo: true,
            maximumMemory: 1 << 20
        )
    }

    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var handshakes = AttachHandshakes(limits: EmulatorLimits(handshakeTimeout: .seconds(2), handshakesPerDomain: 2))

    @Test("one domain's silent connections take only that domain's slots")
    mutating func slotsPerDomain() {
        #expect(self.handshakes.pollTimeout(now: self.start) == -1)
        self.handshakes.begin(fd: 10, domain: Self.domain(1), pid: 1, uid: 0, now: self.start)
        self.handshakes.begin(fd: 11, domain: Self.domain(1), pid: 1, uid: 0, now: self.start)
        #expect(!self.handshakes.hasSlot(for: DomainID(1)))
        #expect(self.handshakes.hasSlot(for: DomainID(2)))
        self.handshakes.begin(fd: 12, domain: Self.domain(2), pid: 2, uid: 0, now: self.start)
        #expect(self.handshakes.end(fd: 10)?.domain == Self.domain(1))
        #expect(self.handshakes.end(fd: 10) == nil)
        #expect(self.handshakes.hasSlot(for: DomainID(1)))
        #expect(Set(self.handshakes.descriptors) == [11, 12])
    }

    @Test("each handshake ends at its own deadline; the poll waits for the earliest")
    mutating func deadlines() {
        self.handshakes.begin(fd: 10, domain: Self.domain(1), pid: 1, uid: 0, now: self.start)
        self.handshakes.begin(fd: 11, domain: Self.domain(2), pid: 1, uid: 0, now: self.start + .milliseconds(500))
        #expect(self.handshakes.pollTimeout(now: self.start) == 2001)
        #expect(self.handshakes.endExpired(now: self.start + .milliseconds(1999)).isEmpty)
        #expect(self.handshakes.endExpired(now: self.start + .seconds(2)).map(\.fd) == [10])
        #expect(self.handshakes.pollTimeout(now: self.start + .seconds(2)) == 501)
        // Late: never a busy poll with a zero timeout.
        #expect(self.handshakes.pollTimeout(now: self.start + .seconds(9)) == 1)
        #expect(self.handshakes.endExpired(now: self.start + .seconds(9)).map(\.fd) == [11])
        #expect(self.handshakes.hasSlot(for: DomainID(1)) && self.handshakes.hasSlot(for: DomainID(2)))
    }

    @Test("a reload that removes a domain ends its handshakes")
    mutating func stale() {
        self.handshakes.begin(fd: 10, domain: Self.domain(1), pid: 1, uid: 0, now: self.start)
        self.handshakes.begin(fd: 11, domain: Self.domain(2), pid: 1, uid: 0, now: self.start)
        #expect(self.handshakes.endAll(where: { $0.domain.id == DomainID(2) }).map(\.fd) == [11])
        #expect(self.handshakes.descriptors == [10])
    }
}
