// SPDX-License-Identifier: Apache-2.0
import HMXStream
import NIOCore
import Testing

@Suite("message order")
struct MessageOrderTests {
    /// Delivers message `number` (its body is the number as text) and returns the
    /// bodies now in order.
    func receive(
        _ order: inout MessageOrder,
        _ number: UInt32,
        base: UInt32? = nil,
        instance: UInt64 = 1
    ) throws(MessageOrder.Violation) -> [String] {
        let delivery = try order.receive(
            number: number,
            base: base ?? number,
            instance: instance,
            message: ByteBuffer(string: "\(number)")
        )
        return delivery.messages.map { String(buffer: $0) }
    }

    @Test func inOrderMessagesPassStraightThrough() throws {
        var order = MessageOrder()
        #expect(try self.receive(&order, 0) == ["0"])
        #expect(try self.receive(&order, 1, base: 0) == ["1"])
        #expect(try self.receive(&order, 2, base: 1) == ["2"])
        #expect(order.expected == 3)
        #expect(order.heldCount == 0)
    }

    @Test("a message retried after EAGAIN arrives late and is put back first")
    func lateMessageIsPutBack() throws {
        var order = MessageOrder()
        #expect(try self.receive(&order, 0) == ["0"])
        // 1 found the ring full; 2 and 3 got in; the sender's base stays 1.
        #expect(try self.receive(&order, 2, base: 1) == [])
        #expect(try self.receive(&order, 3, base: 1) == [])
        #expect(order.heldCount == 2)
        #expect(try self.receive(&order, 1, base: 1) == ["1", "2", "3"])
        #expect(order.heldCount == 0)
        #expect(try self.receive(&order, 4, base: 4) == ["4"])
    }

    @Test("the first message heard may be a late one: numbering starts at its base")
    func firstMessageStartsAtItsBase() throws {
        var order = MessageOrder()
        #expect(try self.receive(&order, 12, base: 10) == [])
        #expect(try self.receive(&order, 11, base: 10) == [])
        #expect(try self.receive(&order, 10, base: 10) == ["10", "11", "12"])
    }

    @Test("numbers wrap around 2^32")
    func wrapAround() throws {
        var order = MessageOrder()
        #expect(try self.receive(&order, UInt32.max - 1) == ["\(UInt32.max - 1)"])
        #expect(try self.receive(&order, 0, base: UInt32.max) == [])
        #expect(try self.receive(&order, UInt32.max, base: UInt32.max) == ["\(UInt32.max)", "0"])
        #expect(order.expected == 1)
    }

    @Test("a hostile or broken peer: duplicates, old numbers, numbers beyond the window, bad bases")
    func violations() throws {
        var order = MessageOrder()
        _ = try self.receive(&order, 0)
        _ = try self.receive(&order, 2, base: 1)
        #expect(throws: MessageOrder.Violation.duplicate(2)) { try self.receive(&order, 2, base: 1) }
        #expect(throws: MessageOrder.Violation.outsideWindow(number: 0, expected: 1)) {
            try self.receive(&order, 0, base: 0)
        }
        let far = 1 + MessageOrder.window
        #expect(throws: MessageOrder.Violation.badBase(number: far, base: 1)) { try self.receive(&order, far, base: 1) }
        #expect(throws: MessageOrder.Violation.outsideWindow(number: far + 1, expected: 1)) {
            try self.receive(&order, far + 1, base: far + 1)
        }
        #expect(throws: MessageOrder.Violation.badBase(number: 5, base: 6)) { try self.receive(&order, 5, base: 6) }
        // Held messages never exceed the window.
        #expect(order.heldCount < Int(MessageOrder.window))
        // After a violation the caller resets; the peer's next message starts again.
        order.reset()
        #expect(try self.receive(&order, 40, base: 40) == ["40"])
    }

    @Test("a new instance id means the peer restarted: what was held is dropped")
    func peerRestart() throws {
        var order = MessageOrder()
        _ = try self.receive(&order, 5)
        _ = try self.receive(&order, 7, base: 6)
        let delivery = try order.receive(number: 0, base: 0, instance: 2, message: ByteBuffer(string: "new"))
        #expect(delivery.peerRestarted)
        #expect(delivery.messages.map { String(buffer: $0) } == ["new"])
        #expect(order.heldCount == 0)
        #expect(order.instance == 2)
    }

    @Test("messages that went to a ring of ours that is gone: the base moves past them")
    func baseAheadSkipsLostMessages() throws {
        var order = MessageOrder()
        _ = try self.receive(&order, 0)
        // 1 and 2 went to a ring that no longer exists; 3 found the new one full.
        #expect(try self.receive(&order, 4, base: 1) == [])
        // The sender saw 1 and 2 delivered: its base is now 3.
        #expect(try self.receive(&order, 5, base: 3) == [])
        #expect(try self.receive(&order, 3, base: 3) == ["3", "4", "5"])
        // Once past a gap, what was held is delivered with the next message.
        #expect(try self.receive(&order, 8, base: 6) == [])
        #expect(try self.receive(&order, 9, base: 8) == ["8", "9"])
        #expect(order.expected == 10)
        // A sender that dropped a whole window of messages (its sends failed for good).
        #expect(
            try self.receive(&order, 10 + MessageOrder.window, base: 10 + MessageOrder.window) == [
                "\(10 + MessageOrder.window)"
            ]
        )
        // But never further: that is a violation.
        let next = order.expected
        #expect(throws: MessageOrder.Violation.outsideWindow(number: next + MessageOrder.window + 1, expected: next)) {
            try self.receive(&order, next + MessageOrder.window + 1, base: next + MessageOrder.window + 1)
        }
    }
}
