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
        #expect(state.delivered(200) == 0)
        #expect(state.delivered(100) == 300)
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
        #expect(state.delivered(100) == 0)
    }
}
