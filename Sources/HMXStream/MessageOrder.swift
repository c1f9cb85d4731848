// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// Puts one peer's messages back in the order they were sent (docs/PROTOCOL.md,
/// "Message order").
///
/// A gateway keeps several messages in flight to a peer. A message that finds the
/// peer's ring full (EAGAIN) is sent again after the hypervisor's wake-up, so a later
/// message may arrive first. Every message starts with a SEQUENCE frame: its number,
/// the sender's `base` (the oldest number it has not yet seen delivered) and the
/// sender's instance id. The receiver delivers messages strictly by number and holds
/// early arrivals, at most ``window`` - 1 of them: the sender never numbers a message
/// `window` or more past its base.
///
/// Anything else from the peer (a number outside the window, one already held or
/// already delivered, a base ahead of the number) is a violation: the caller ends the
/// peer's connections, and ordering starts again with the peer's next message.
public struct MessageOrder: Sendable {
    /// Messages a sender may have between its base and its newest, inclusive.
    public static let window: UInt32 = 8

    public enum Violation: Error, Equatable, Sendable {
        /// The number is more than `window` - 1 past the base or the next expected.
        case outsideWindow(number: UInt32, expected: UInt32)
        /// A message with this number is already held.
        case duplicate(UInt32)
        /// The base is after the number, or more than `window` - 1 before it.
        case badBase(number: UInt32, base: UInt32)
    }

    /// What one received message yields.
    public struct Delivery: Sendable {
        /// The peer's instance id differs from the one before (not set for the first).
        public var peerRestarted: Bool
        /// Messages now in order, oldest first (possibly none: the message is held).
        public var messages: [ByteBuffer]
    }

    /// The instance id of the peer's current run, once heard.
    public private(set) var instance: UInt64?
    /// The number of the next message to deliver.
    public private(set) var expected: UInt32 = 0
    private var held: [UInt32: ByteBuffer] = [:]

    public init() {}

    /// Messages held until an earlier one arrives.
    public var heldCount: Int { self.held.count }

    /// Accepts a message whose SEQUENCE frame has been read; `message` is the rest.
    public mutating func receive(
        number: UInt32,
        base: UInt32,
        instance: UInt64,
        message: ByteBuffer
    ) throws(Violation) -> Delivery {
        guard number &- base < Self.window else { throw .badBase(number: number, base: base) }
        var delivery = Delivery(peerRestarted: false, messages: [])
        if self.instance != instance {
            // A new run of the peer (or the first we hear): its numbering starts at its base.
            delivery.peerRestarted = self.instance != nil
            self.instance = instance
            self.expected = base
            self.held.removeAll()
        } else if base &- self.expected <= Self.window, base != self.expected {
            // Messages before `base` will never come: the sender saw them delivered to a
            // ring of ours that is gone (we restarted while they were in flight), or it
            // dropped them when sending failed for good (at most a window of them).
            // Deliver what we hold before it and go on from there.
            while self.expected != base {
                if let early = self.held.removeValue(forKey: self.expected) { delivery.messages.append(early) }
                self.expected &+= 1
            }
            self.deliverHeld(into: &delivery)
        }
        let offset = number &- self.expected
        guard offset < Self.window else { throw .outsideWindow(number: number, expected: self.expected) }
        if offset > 0 {
            guard self.held.updateValue(message, forKey: number) == nil else { throw .duplicate(number) }
            return delivery
        }
        delivery.messages.append(message)
        self.expected &+= 1
        self.deliverHeld(into: &delivery)
        return delivery
    }

    /// Held messages that are next in order.
    private mutating func deliverHeld(into delivery: inout Delivery) {
        while let next = self.held.removeValue(forKey: self.expected) {
            delivery.messages.append(next)
            self.expected &+= 1
        }
    }

    /// Forgets the peer's numbering (after a violation or when the peer is gone): its
    /// next message starts it again.
    public mutating func reset() {
        self.instance = nil
        self.expected = 0
        self.held.removeAll()
    }
}
