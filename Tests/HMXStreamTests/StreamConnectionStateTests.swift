// SPDX-License-Identifier: Apache-2.0
import HMXStream
import Testing

@Suite("Stream connection state machine")
struct StreamConnectionStateTests {
    typealias State = StreamConnectionState

    @Test("opener: accept, data both ways within credit, half-close, close")
    func openerLifecycle() {
        var state = State.opening(window: 1000)
        #expect(state.phase == .opening)
        #expect(state.accepted(credit: 500) == .success(.resumeReading))
        #expect(state.phase == .open && state.sendCredit == 500)
        state.sent(500)
        #expect(state.sendCredit == 0)
        #expect(state.receivedCredit(100) == .success(.resumeReading))
        #expect(state.receivedCredit(100) == .success(.none))
        #expect(state.receivedData(600) == .success(.none))
        #expect(state.receiveAllowance == 400)
        // Credit is granted back in batches of at least a quarter window.
        #expect(state.delivered(200).increment == 0)
        #expect(state.delivered(100) == State.Grant(increment: 300, growth: 0))
        #expect(state.receiveAllowance == 700)
        #expect(state.sentFin() == false)
        #expect(state.receivedFin() == .success(.closeLocal))
        #expect(state.isClosed)
    }

    @Test("acceptor: dial, then the peer half-closes first")
    func acceptorLifecycle() {
        var state = State.dialing(window: 1000, peerCredit: 300)
        #expect(state.dialSucceeded() == .success(.resumeReading))
        #expect(state.sendCredit == 300)
        #expect(state.receivedFin() == .success(.shutdownLocalOutput))
        #expect(!state.isClosed)
        // Data the other way still flows after the peer's FIN.
        state.sent(300)
        #expect(state.sentFin() == true)
        #expect(state.isClosed)
    }

    @Test("refusal and reset close the connection")
    func refusalAndReset() {
        var refused = State.opening(window: 1000)
        #expect(refused.refused() == .success(.abortLocal))
        #expect(refused.isClosed)
        var reset = State.opening(window: 1000)
        _ = reset.accepted(credit: 10)
        #expect(reset.receivedReset() == .abortLocal)
        #expect(reset.receivedReset() == .none)
        var failed = State.dialing(window: 1000, peerCredit: 10)
        failed.dialFailed()
        #expect(failed.isClosed)
    }

    @Test("illegal transitions from a hostile peer are violations")
    func hostilePeer() {
        var opening = State.opening(window: 1000)
        #expect(opening.receivedData(1) == .failure(.unexpected("DATA in phase opening")))
        #expect(opening.receivedFin() == .failure(.unexpected("FIN in phase opening")))
        #expect(opening.receivedCredit(1) == .failure(.unexpected("CREDIT in phase opening")))
        #expect(opening.accepted(credit: UInt32(State.maximumCredit) + 1) == .failure(.creditOverflow))

        var open = State.opening(window: 1000)
        _ = open.accepted(credit: 10)
        #expect(open.accepted(credit: 10) == .failure(.unexpected("ACCEPT in phase open")))
        #expect(open.refused() == .failure(.unexpected("REFUSE in phase open")))
        #expect(open.receivedData(1001) == .failure(.beyondCredit))
        #expect(open.receivedData(1000) == .success(.none))
        #expect(open.receivedData(1) == .failure(.beyondCredit))
        #expect(open.receivedCredit(UInt32(State.maximumCredit)) == .failure(.creditOverflow))
        #expect(open.receivedFin() == .success(.shutdownLocalOutput))
        #expect(open.receivedFin() == .failure(.unexpected("second FIN")))
        #expect(open.receivedData(1) == .failure(.unexpected("DATA after FIN")))

        var dialing = State.dialing(window: 1000, peerCredit: 10)
        #expect(dialing.receivedData(1) == .failure(.unexpected("DATA in phase dialing")))
        #expect(dialing.accepted(credit: 1) == .failure(.unexpected("ACCEPT in phase dialing")))
        var closed = State.opening(window: 1000)
        closed.aborted()
        #expect(closed.dialSucceeded() == .failure(.unexpected("dial completed in phase closed")))
        #expect(closed.receivedData(1) == .failure(.unexpected("DATA in phase closed")))
    }

    @Test("no credit is granted once the peer has finished")
    func noCreditAfterFin() {
        var state = State.opening(window: 100)
        _ = state.accepted(credit: 10)
        _ = state.receivedData(100)
        _ = state.receivedFin()
        #expect(state.delivered(100).increment == 0)
    }

    // MARK: - Window growth

    /// An open connection with `window`, growing to `maximum`.
    static func open(window: Int, maximum: Int) -> State {
        var state = State.opening(window: window, maximumWindow: maximum)
        _ = state.accepted(credit: 0)
        return state
    }

    /// The peer sends the whole allowance and the application takes it at once
    /// (`step` ns later); returns the grants.
    static func fastRound(_ state: inout State, at time: inout UInt64, step: UInt64, budget: Int) -> [State.Grant] {
        let chunk = state.receiveAllowance
        #expect(state.receivedData(chunk) == .success(.none))
        time += step
        return [state.delivered(chunk, now: time, mayGrowBy: budget)]
    }

    @Test("a window-limited stream whose reader keeps up doubles its window up to the maximum")
    func windowGrowsForFastStream() {
        var state = Self.open(window: 1000, maximum: 4000)
        var time: UInt64 = 1_000_000
        // The first delivery starts the clock.
        #expect(Self.fastRound(&state, at: &time, step: 1000, budget: .max) == [State.Grant(increment: 1000, growth: 0)])
        // A whole window: the peer used all of its allowance, the application took it
        // within the growth interval: the window doubles, granted at once.
        let first = Self.fastRound(&state, at: &time, step: 1000, budget: .max)
        #expect(first == [State.Grant(increment: 2000, growth: 1000)])
        #expect(state.window == 2000 && state.receiveAllowance == 2000)
        _ = Self.fastRound(&state, at: &time, step: 1000, budget: .max)
        #expect(state.window == 4000)
        // At the maximum it grows no further; credit is still returned.
        let third = Self.fastRound(&state, at: &time, step: 1000, budget: .max)
        #expect(third == [State.Grant(increment: 4000, growth: 0)])
        #expect(state.window == 4000 && state.receiveAllowance == 4000)
    }

    @Test("a slow reader does not grow the window, however limited the peer is")
    func slowReaderKeepsWindow() {
        var state = Self.open(window: 1000, maximum: 4000)
        var time: UInt64 = 1_000_000
        for _ in 0..<5 {
            _ = Self.fastRound(&state, at: &time, step: State.growthInterval + 1, budget: .max)
        }
        #expect(state.window == 1000)
        #expect(state.receiveAllowance == 1000)
    }

    @Test("an application-limited peer (allowance never runs low) does not grow the window")
    func unlimitedPeerKeepsWindow() {
        var state = Self.open(window: 1000, maximum: 4000)
        var total = 0
        for step in 1...40 {
            #expect(state.receivedData(100) == .success(.none))
            total += state.delivered(100, now: UInt64(step) * 1000, mayGrowBy: .max).increment.toInt
        }
        #expect(state.window == 1000)
        #expect(total + state.consumedNotGranted == 4000)
    }

    @Test("growth takes no more than the budget, and none without one")
    func growthBoundedByBudget() {
        var state = Self.open(window: 1000, maximum: 8000)
        var time: UInt64 = 1_000_000
        _ = Self.fastRound(&state, at: &time, step: 10, budget: .max)
        #expect(Self.fastRound(&state, at: &time, step: 10, budget: 0) == [State.Grant(increment: 1000, growth: 0)])
        #expect(state.window == 1000)
        #expect(Self.fastRound(&state, at: &time, step: 10, budget: 300) == [State.Grant(increment: 1300, growth: 300)])
        #expect(state.window == 1300)
        #expect(state.receiveAllowance == 1300)
    }

    @Test("the maximum is never below the window, and without one the window is fixed")
    func maximumDefaults() {
        #expect(State.opening(window: 1000).maximumWindow == 1000)
        #expect(State.opening(window: 1000, maximumWindow: 10).maximumWindow == 1000)
        #expect(State.dialing(window: 1000, maximumWindow: 5000, peerCredit: 1).maximumWindow == 5000)
        var fixed = Self.open(window: 1000, maximum: 1000)
        var time: UInt64 = 0
        _ = Self.fastRound(&fixed, at: &time, step: 1, budget: .max)
        _ = Self.fastRound(&fixed, at: &time, step: 1, budget: .max)
        #expect(fixed.window == 1000)
    }
}

extension UInt32 {
    fileprivate var toInt: Int { Int(self) }
}
