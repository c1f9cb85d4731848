// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore
import Testing

@testable import HMXGateway

@Suite("Warning limiter")
struct WarningLimiterTests {
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    static let mallory = DomainID(3)
    static let alpha = DomainID(1)

    @Test("a flood of one kind from one peer: a few lines, then one report of what was left out")
    func flood() {
        var limiter = WarningLimiter()
        var logged = 0
        for step in 0..<32_000 {
            let now = Self.start + .microseconds(Int64(step))
            if case .log = limiter.admit(.refusedOpen, from: Self.mallory, now: now) { logged += 1 }
        }
        #expect(logged == WarningLimiter.burst)
        #expect(limiter.expired(now: Self.start + .seconds(1)).isEmpty, "reported once the interval is over")
        let reports = limiter.expired(now: Self.start + WarningLimiter.interval)
        #expect(reports.count == 1)
        #expect(reports.first?.suppressed == 32_000 - WarningLimiter.burst)
        #expect(limiter.expired(now: Self.start + .seconds(60)).isEmpty, "reported once")
    }

    @Test("other peers and other kinds keep their own share")
    func separateShares() {
        var limiter = WarningLimiter()
        for _ in 0..<100 { _ = limiter.admit(.malformed, from: Self.mallory, now: Self.start) }
        #expect(limiter.admit(.malformed, from: Self.alpha, now: Self.start) == .log(suppressed: 0))
        #expect(limiter.admit(.restarted, from: Self.mallory, now: Self.start) == .log(suppressed: 0))
    }

    @Test("the next interval's first line says how many were left out")
    func nextInterval() {
        var limiter = WarningLimiter()
        for _ in 0..<8 { _ = limiter.admit(.violation, from: Self.mallory, now: Self.start) }
        #expect(
            limiter.admit(.violation, from: Self.mallory, now: Self.start + WarningLimiter.interval)
                == .log(suppressed: 3)
        )
        #expect(limiter.expired(now: Self.start + .seconds(60)).isEmpty)
    }

    @Test("memory is bounded: beyond the tracked keys, warnings are counted, not kept")
    func boundedKeys() {
        var limiter = WarningLimiter()
        for domain in 0..<UInt16(WarningLimiter.maximumKeys) {
            _ = limiter.admit(.reset, from: DomainID(domain), now: Self.start)
        }
        #expect(limiter.admit(.reset, from: DomainID(30_000), now: Self.start) == .suppress)
        #expect(limiter.untracked == 1)
        // Once the windows are over they make room.
        #expect(limiter.admit(.reset, from: DomainID(30_000), now: Self.start + .seconds(11)) == .log(suppressed: 0))
    }
}
