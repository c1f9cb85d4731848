// SPDX-License-Identifier: Apache-2.0
import HMXStream
import NIOCore
import Testing

@Suite("Stream connection state: events in, actions out")
struct StreamConnectionStateTests {
    typealias State = StreamConnectionState
    typealias Action = StreamConnectionState.Action

    static let key = StreamFrame.ConnectionKey(id: 5, openedLocally: true)
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func bytes(_ count: Int) -> ByteBuffer {
        ByteBuffer(repeating: 0x61, count: count)
    }

    /// Runs one event and returns its actions.
    static func on(_ state: inout State, _ event: (inout State, inout [Action]) -> Void) -> [Action] {
        var actions: [Action] = []
        event(&state, &actions)
        return actions
    }

    static func opening(window: Int = 1000) -> State {
        State.opening(key: Self.key, window: window, now: Self.start, openTimeout: .seconds(30))
    }

    /// A connection we opened, accepted with `credit`.
    static func open(window: Int = 1000, credit: UInt32 = 1000) -> State {
        var state = Self.opening(window: window)
        _ = Self.on(&state) {
            $0.peerAccepted(credit: credit, instance: 7, maximumData: 65536, queueHasRoom: true, into: &$1)
        }
        return state
    }

    @Test("opener: bytes read before ACCEPT are held, sent within credit, then FIN; the peer's FIN closes it")
    func openerLifecycle() {
        var state = Self.opening()
        #expect(Self.on(&state) { $0.localRead(Self.bytes(300), maximumData: 65536, now: Self.start, into: &$1) } == [])
        #expect(state.heldBytes == 300)
        let accepted = Self.on(&state) {
            $0.peerAccepted(credit: 200, instance: 7, maximumData: 65536, queueHasRoom: true, into: &$1)
        }
        #expect(accepted == [.opened, .send(.data(key: Self.key, payload: Self.bytes(200)))])
        // The rest waits for credit; no read while bytes are held.
        let credited = Self.on(&state) { $0.peerCredit(200, maximumData: 65536, queueHasRoom: true, into: &$1) }
        #expect(credited == [.send(.data(key: Self.key, payload: Self.bytes(100))), .read])
        #expect(Self.on(&state) { $0.localInputClosed(into: &$1) } == [.send(.fin(key: Self.key))])
        #expect(Self.on(&state) { $0.peerData(Self.bytes(50), now: Self.start, into: &$1) } == [.write(Self.bytes(50))])
        #expect(state.undeliveredBytes == 50)
        // Credit goes back in batches of a quarter window.
        #expect(Self.on(&state) { $0.localWriteCompleted(50, now: Self.start, budget: 0, into: &$1) } == [])
        #expect(Self.on(&state) { $0.peerFin(into: &$1) } == [.shutdownOutput, .remove])
        #expect(state.isClosed)
    }

    @Test("DATA is cut to the largest DATA a message to the peer takes")
    func dataSplitToMaximum() {
        var state = Self.open(credit: 1000)
        let actions = Self.on(&state) { $0.localRead(Self.bytes(250), maximumData: 100, now: Self.start, into: &$1) }
        #expect(actions.count == 3)
        #expect(actions.last == .send(.data(key: Self.key, payload: Self.bytes(50))))
        #expect(state.flow.sendCredit == 750)
    }

    @Test("acceptor: ACCEPT once the target is connected, or REFUSE when it is not")
    func acceptor() {
        let remote = StreamFrame.ConnectionKey(id: 9, openedLocally: false)
        var state = State.dialing(key: remote, window: 1000, peerCredit: 300, peerInstance: 7, now: Self.start)
        let dialled = Self.on(&state) { $0.dialSucceeded(instance: 42, queueHasRoom: true, into: &$1) }
        #expect(dialled == [.send(.accept(key: remote, initialCredit: 1000, instance: 42)), .opened, .read])
        var refused = State.dialing(key: remote, window: 1000, peerCredit: 300, now: Self.start)
        let actions = Self.on(&refused) { $0.refuse(.targetRefused, into: &$1) }
        #expect(
            actions == [
                .send(.refuse(key: remote, reason: .targetRefused)), .ended(.refusedHere(.targetRefused)), .remove,
            ]
        )
    }

    @Test("REFUSE and RESET from the peer abort the socket, once")
    func refusalAndReset() {
        var refused = Self.opening()
        #expect(
            Self.on(&refused) { $0.peerRefused(.noSuchService, into: &$1) } == [
                .abort, .ended(.refusedByPeer(.noSuchService)), .remove,
            ]
        )
        var reset = Self.open()
        #expect(
            Self.on(&reset) { $0.peerReset(.applicationReset, into: &$1) } == [
                .abort, .ended(.resetByPeer(.applicationReset)), .remove,
            ]
        )
        #expect(Self.on(&reset) { $0.peerReset(.applicationReset, into: &$1) } == [])
    }

    @Test("frames the protocol does not allow reset only this connection, with the reason")
    func violations() {
        var opening = Self.opening()
        let early = Self.on(&opening) { $0.peerData(Self.bytes(1), now: Self.start, into: &$1) }
        #expect(
            early == [
                .send(.reset(key: Self.key, reason: .protocolViolation)), .abort,
                .ended(.violation(.unexpected(.data, in: .opening))), .remove,
            ]
        )
        var open = Self.open(window: 100)
        let beyond = Self.on(&open) { $0.peerData(Self.bytes(101), now: Self.start, into: &$1) }
        #expect(beyond.first == .send(.reset(key: Self.key, reason: .flowControlViolation)))
        var finished = Self.open()
        _ = Self.on(&finished) { $0.peerFin(into: &$1) }
        #expect(Self.on(&finished) { $0.peerFin(into: &$1) }.contains(.ended(.violation(.secondFin))))
        var overflow = Self.open(credit: UInt32(StreamFlowControl.maximumCredit))
        #expect(
            Self.on(&overflow) { $0.peerCredit(1, maximumData: 65536, queueHasRoom: true, into: &$1) }.contains(
                .ended(.violation(.creditOverflow))
            )
        )
    }

    @Test("a socket that closed cleanly sends FIN; DATA after it cannot be delivered and resets both ends")
    func dataAfterLocalClose() {
        var state = Self.open()
        #expect(Self.on(&state) { $0.localClosed(error: false, into: &$1) } == [.send(.fin(key: Self.key))])
        let late = Self.on(&state) { $0.peerData(Self.bytes(10), now: Self.start, into: &$1) }
        #expect(late == [.send(.reset(key: Self.key, reason: .applicationReset)), .ended(.localReset), .remove])
    }

    @Test("a socket that goes away with bytes still being written resets at once")
    func socketGoneWithUndeliveredBytes() {
        var state = Self.open()
        _ = Self.on(&state) { $0.peerData(Self.bytes(10), now: Self.start, into: &$1) }
        let closed = Self.on(&state) { $0.localClosed(error: false, into: &$1) }
        #expect(closed == [.send(.reset(key: Self.key, reason: .applicationReset)), .ended(.localReset), .remove])
        var failed = Self.open()
        #expect(
            Self.on(&failed) { $0.localClosed(error: true, into: &$1) }.first
                == .send(.reset(key: Self.key, reason: .applicationReset))
        )
    }

    @Test("reading waits while the peer's queue is full, and resumes when it has room")
    func queueRoom() {
        var state = Self.open()
        _ = Self.on(&state) { $0.localRead(Self.bytes(10), maximumData: 65536, now: Self.start, into: &$1) }
        #expect(Self.on(&state) { $0.localReadComplete(queueHasRoom: false, into: &$1) } == [.waitForQueueRoom])
        #expect(Self.on(&state) { $0.localReadComplete(queueHasRoom: false, into: &$1) } == [])
        #expect(Self.on(&state) { $0.queueHasRoom(into: &$1) } == [.read])
        // One read at a time.
        #expect(Self.on(&state) { $0.localReadComplete(queueHasRoom: true, into: &$1) } == [])
    }

    @Test("half-close before ACCEPT: the FIN follows the held bytes")
    func halfCloseWhileOpening() {
        var state = Self.opening()
        _ = Self.on(&state) { $0.localRead(Self.bytes(20), maximumData: 65536, now: Self.start, into: &$1) }
        #expect(Self.on(&state) { $0.localInputClosed(into: &$1) } == [])
        let accepted = Self.on(&state) {
            $0.peerAccepted(credit: 10, instance: 7, maximumData: 65536, queueHasRoom: true, into: &$1)
        }
        #expect(accepted == [.opened, .send(.data(key: Self.key, payload: Self.bytes(10)))])
        let credited = Self.on(&state) { $0.peerCredit(10, maximumData: 65536, queueHasRoom: true, into: &$1) }
        #expect(credited == [.send(.data(key: Self.key, payload: Self.bytes(10))), .send(.fin(key: Self.key))])
    }

    @Test("timers: idle timeout, and no answer to OPEN")
    func timers() {
        var idle = State.opening(key: Self.key, window: 1000, now: Self.start, idleTimeout: .seconds(1))
        _ = Self.on(&idle) {
            $0.peerAccepted(credit: 10, instance: 7, maximumData: 65536, queueHasRoom: true, into: &$1)
        }
        #expect(Self.on(&idle) { $0.tick(now: Self.start + .milliseconds(900), into: &$1) } == [])
        let timedOut = Self.on(&idle) { $0.tick(now: Self.start + .seconds(2), into: &$1) }
        #expect(
            timedOut == [
                .send(.reset(key: Self.key, reason: .idleTimeout)), .abort, .ended(.terminated(.idleTimeout)), .remove,
            ]
        )
        var unanswered = Self.opening()
        #expect(Self.on(&unanswered) { $0.tick(now: Self.start + .seconds(29), into: &$1) } == [])
        #expect(
            Self.on(&unanswered) { $0.tick(now: Self.start + .seconds(31), into: &$1) }.contains(.ended(.openTimedOut))
        )
    }

    @Test("an OPEN sent before our ring existed is reset when the ring appears")
    func ringAppeared() {
        var stranded = State.opening(key: Self.key, window: 1000, now: Self.start, ringExists: false)
        let actions = Self.on(&stranded) { $0.ringAppeared(into: &$1) }
        #expect(
            actions == [
                .send(.reset(key: Self.key, reason: .linkFailure)), .abort, .ended(.terminated(.noRing)), .remove,
            ]
        )
        var fine = Self.opening()
        #expect(Self.on(&fine) { $0.ringAppeared(into: &$1) } == [])
    }

    @Test("the peer restarted: its old run's connections end; one still opening waits a little for the new run")
    func peerRestarted() {
        var old = Self.open()
        #expect(
            Self.on(&old) { $0.peerRestarted(as: 8, now: Self.start, into: &$1) } == [
                .abort, .ended(.terminated(.peerLost)), .remove,
            ]
        )
        var current = Self.open()
        #expect(Self.on(&current) { $0.peerRestarted(as: 7, now: Self.start, into: &$1) } == [])
        var opening = Self.opening()
        #expect(Self.on(&opening) { $0.peerRestarted(as: 8, now: Self.start, into: &$1) } == [])
        #expect(opening.openDeadline == Self.start + State.openTimeoutAfterPeerRestart)
    }
}
