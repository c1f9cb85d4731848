// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import NIOCore
import Testing

@Suite("Peer health: rings, sizes, keepalive")
struct PeerHealthTests {
    static let start = NIODeadline.uptimeNanoseconds(10_000_000_000)

    @Test("a partner ring is registered once; ESRCH retries quickly four times, then the tick takes over")
    func registration() {
        var health = PeerHealth(isPartner: true, now: Self.start)
        var actions: [PeerHealth.Action] = []
        health.registerIfNeeded(into: &actions)
        health.registerIfNeeded(into: &actions)
        #expect(actions == [.registerRing(attempt: 0, check: false)])
        actions = []
        for attempt in 0..<4 {
            health.ringRegistrationFailed(errno: .ESRCH, attempt: attempt, check: false, into: &actions)
        }
        #expect(actions.count == 4)
        #expect(actions.last == .registerRingLater(attempt: 4, delay: .milliseconds(800)))
        actions = []
        health.ringRegistrationFailed(errno: .ESRCH, attempt: 4, check: false, into: &actions)
        #expect(actions.isEmpty && health.ring == .absent)
        health.tick(now: Self.start, hasConnections: false, isSizeKnown: false, into: &actions)
        #expect(actions == [.registerRing(attempt: 0, check: false)])
        let wasMissing = health.ringRegistered(check: false)
        #expect(wasMissing)
        #expect(health.hasRing)
    }

    @Test("a peer with connections is pinged; silence brings a ring check, then the verdict")
    func keepalive() {
        var health = PeerHealth(isPartner: true, now: Self.start)
        _ = health.ringRegistered(check: false)
        var actions: [PeerHealth.Action] = []
        health.tick(now: Self.start + .seconds(1), hasConnections: true, isSizeKnown: true, into: &actions)
        #expect(actions == [.ping])
        actions = []
        health.tick(now: Self.start + .seconds(2), hasConnections: true, isSizeKnown: true, into: &actions)
        #expect(actions == [.registerRing(attempt: 0, check: true), .ping])
        actions = []
        health.ringRegistrationFailed(errno: .EEXIST, attempt: 0, check: true, into: &actions)
        health.tick(now: Self.start + .seconds(5), hasConnections: true, isSizeKnown: true, into: &actions)
        #expect(actions.contains(.timedOut))
        actions = []
        health.heard(now: Self.start + .seconds(5))
        health.tick(now: Self.start + .seconds(6), hasConnections: true, isSizeKnown: true, into: &actions)
        #expect(actions == [.ping])
    }

    @Test("the peer's ring size is asked for while unknown, at most every 100 ms")
    func sizeQueries() {
        var health = PeerHealth(isPartner: false, now: Self.start)
        var actions: [PeerHealth.Action] = []
        health.querySizeIfUnknown(isKnown: false, now: Self.start, into: &actions)
        health.sizeQueryCompleted()
        health.querySizeIfUnknown(isKnown: false, now: Self.start + .milliseconds(50), into: &actions)
        health.querySizeIfUnknown(isKnown: false, now: Self.start + .milliseconds(150), into: &actions)
        health.sizeQueryCompleted()
        health.querySizeIfUnknown(isKnown: true, now: Self.start + .seconds(1), into: &actions)
        #expect(actions == [.queryMessageSize, .queryMessageSize])
    }
}
