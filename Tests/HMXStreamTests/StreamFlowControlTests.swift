// SPDX-License-Identifier: Apache-2.0
import HMXStream
import Testing

@Suite("Stream flow control and window autotuning")
struct StreamFlowControlTests {
    typealias Flow = StreamFlowControl
    typealias Grant = StreamFlowControl.Grant

    @Test("credit: granted, spent, topped up; overflow and data beyond the allowance are violations")
    func credit() {
        var flow = Flow(window: 1000)
        #expect(flow.sendCredit == 0 && flow.receiveAllowance == 1000)
        #expect(flow.granted(initialCredit: UInt32(Flow.maximumCredit) + 1).violation == .creditOverflow)
        #expect(flow.granted(initialCredit: 500).violation == nil)
        flow.sent(500)
        #expect(flow.receivedCredit(100) == .success(true))
        #expect(flow.receivedCredit(100) == .success(false))
        #expect(flow.sendCredit == 200)
        #expect(flow.receivedCredit(UInt32(Flow.maximumCredit)) == .failure(.creditOverflow))
        #expect(flow.receivedData(1001).violation == .beyondCredit)
        #expect(flow.receivedData(1000).violation == nil)
        #expect(flow.receivedData(1).violation == .beyondCredit)
    }

    @Test("credit goes back in batches of at least a quarter window, and not once granting is over")
    func batchedGrants() {
        var flow = Flow(window: 1000)
        _ = flow.receivedData(600)
        #expect(flow.delivered(200, now: 0, budget: 0) == .none)
        #expect(flow.delivered(100, now: 0, budget: 0) == Grant(increment: 300, growth: 0))
        #expect(flow.receiveAllowance == 700)
        #expect(flow.delivered(300, now: 0, budget: 0, mayGrant: false) == .none)
        #expect(flow.receiveAllowance == 700)
    }

    /// The peer sends the whole allowance and the application takes it `step` ns later.
    static func fastRound(_ flow: inout Flow, at time: inout UInt64, step: UInt64, budget: Int) -> Grant {
        let chunk = flow.receiveAllowance
        #expect(flow.receivedData(chunk).violation == nil)
        time += step
        return flow.delivered(chunk, now: time, budget: budget)
    }

    @Test("a window-limited stream whose reader keeps up doubles its window up to the maximum")
    func windowGrowsForFastStream() {
        var flow = Flow(window: 1000, maximumWindow: 4000)
        var time: UInt64 = 1_000_000
        // The first delivery starts the clock.
        #expect(Self.fastRound(&flow, at: &time, step: 1000, budget: .max) == Grant(increment: 1000, growth: 0))
        // A whole window within the interval while the peer was limited: doubled at once.
        #expect(Self.fastRound(&flow, at: &time, step: 1000, budget: .max) == Grant(increment: 2000, growth: 1000))
        #expect(flow.window == 2000 && flow.receiveAllowance == 2000 && flow.growth == 1000)
        _ = Self.fastRound(&flow, at: &time, step: 1000, budget: .max)
        #expect(flow.window == 4000)
        // At the maximum it grows no further; credit is still returned.
        #expect(Self.fastRound(&flow, at: &time, step: 1000, budget: .max) == Grant(increment: 4000, growth: 0))
        #expect(flow.window == 4000 && flow.growth == 3000)
    }

    @Test("a slow reader does not grow the window, however limited the peer is")
    func slowReaderKeepsWindow() {
        var flow = Flow(window: 1000, maximumWindow: 4000)
        var time: UInt64 = 1_000_000
        for _ in 0..<5 { _ = Self.fastRound(&flow, at: &time, step: Flow.growthInterval + 1, budget: .max) }
        #expect(flow.window == 1000 && flow.receiveAllowance == 1000)
    }

    @Test("an application-limited peer (allowance never runs low) does not grow the window")
    func unlimitedPeerKeepsWindow() {
        var flow = Flow(window: 1000, maximumWindow: 4000)
        var total = 0
        for step in 1...40 {
            #expect(flow.receivedData(100).violation == nil)
            total += Int(flow.delivered(100, now: UInt64(step) * 1000, budget: .max).increment)
        }
        #expect(flow.window == 1000)
        #expect(total + flow.consumedNotGranted == 4000)
    }

    @Test("growth takes no more than the budget, and none without one; the maximum is never below the window")
    func growthBoundedByBudget() {
        var flow = Flow(window: 1000, maximumWindow: 8000)
        var time: UInt64 = 1_000_000
        _ = Self.fastRound(&flow, at: &time, step: 10, budget: .max)
        #expect(Self.fastRound(&flow, at: &time, step: 10, budget: 0) == Grant(increment: 1000, growth: 0))
        #expect(Self.fastRound(&flow, at: &time, step: 10, budget: 300) == Grant(increment: 1300, growth: 300))
        #expect(flow.window == 1300 && flow.receiveAllowance == 1300)
        #expect(Flow(window: 1000).maximumWindow == 1000)
        #expect(Flow(window: 1000, maximumWindow: 10).maximumWindow == 1000)
    }
}

extension Result where Success == Void, Failure == StreamFlowControl.Violation {
    /// The violation, or nil on success.
    fileprivate var violation: StreamFlowControl.Violation? {
        if case .failure(let violation) = self { return violation }
        return nil
    }
}
