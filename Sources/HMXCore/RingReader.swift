// SPDX-License-Identifier: Apache-2.0
import CHMXShims

/// The receiving guest's side of an Argo ring: reads messages the hypervisor wrote.
///
/// Follows the receive algorithm of ARGO.md §2.3: acquire-load tx_ptr, check every
/// length against the bytes actually available, hand out the payload (in one or two
/// pieces when it wraps), then publish the new rx_ptr after a full barrier. The caller
/// must then notify the hypervisor so that blocked senders are woken.
///
/// The ring memory is mapped contiguously in the reader's address space. Nothing read
/// from it is trusted: a corrupt tx_ptr or length never makes the reader touch memory
/// outside the ring; the ring is then flushed (rx_ptr := tx_ptr) and reported.
public struct RingReader {
    public let length: UInt32
    @usableFromInline let base: UnsafeMutableRawPointer
    /// Our own copy of rx_ptr: the value we last published.
    public private(set) var rxPointer: UInt32

    /// Why a ring was found corrupt.
    public enum Corruption: Error, Equatable, CustomStringConvertible {
        case txPointerOutOfRange(UInt32)
        case txPointerUnaligned(UInt32)
        case truncatedHeader(available: UInt32)
        case headerLengthTooSmall(UInt32)
        case headerLengthBeyondData(length: UInt32, available: UInt32)

        public var description: String {
            switch self {
            case .txPointerOutOfRange(let tx): "tx_ptr \(tx) is outside the ring"
            case .txPointerUnaligned(let tx): "tx_ptr \(tx) is not 16-byte aligned"
            case .truncatedHeader(let available): "only \(available) bytes available, less than a header"
            case .headerLengthTooSmall(let length): "message length \(length) is smaller than its header"
            case .headerLengthBeyondData(let length, let available):
                "message length \(length) exceeds the \(available) bytes available"
            }
        }
    }

    /// One message as it sits in the ring. The payload is valid until ``consume(_:)``.
    public struct Message {
        public var header: ArgoMessageHeader
        /// First part of the payload.
        public var first: UnsafeRawBufferPointer
        /// Second part, non-empty only when the payload wraps around the end of the ring.
        public var second: UnsafeRawBufferPointer
        /// rx_ptr after this message.
        public var nextRxPointer: UInt32

        public var payloadLength: Int { self.first.count + self.second.count }
        public var source: HMXAddress { self.header.source.address }

        /// Copies the payload into a new array.
        public func payloadBytes() -> [UInt8] {
            var bytes = [UInt8]()
            bytes.reserveCapacity(self.payloadLength)
            bytes.append(contentsOf: self.first)
            bytes.append(contentsOf: self.second)
            return bytes
        }
    }

    /// - Parameters:
    ///   - base: the start of the ring memory (the `xen_argo_ring` header).
    ///   - length: the ring data length given at registration.
    public init(base: UnsafeMutableRawPointer, length: UInt32) {
        precondition(length >= ArgoABI.minimumRingLength && length % 16 == 0)
        self.base = base
        self.length = length
        let rx = chmx_load_acquire_u32(base)
        self.rxPointer = (rx < length && rx % 16 == 0) ? rx : 0
    }

    /// Bytes occupied by messages not yet consumed, as tx_ptr says (0 if tx_ptr is bogus).
    public var usedBytes: UInt32 {
        let tx = chmx_load_acquire_u32(self.base + 4)
        guard tx < self.length, tx % 16 == 0 else { return 0 }
        return tx >= self.rxPointer ? tx - self.rxPointer : tx &+ self.length &- self.rxPointer
    }

    /// True if no message is waiting.
    public var isEmpty: Bool {
        chmx_load_acquire_u32(self.base + 4) == self.rxPointer
    }

    /// Returns the next message without consuming it, `nil` if the ring is empty, or
    /// throws if the ring content is inconsistent (the caller should ``flush()``).
    public func peek() throws(Corruption) -> Message? {
        let tx = chmx_load_acquire_u32(self.base + 4)
        let rx = self.rxPointer
        if tx == rx { return nil }
        if tx >= self.length { throw .txPointerOutOfRange(tx) }
        if tx % 16 != 0 { throw .txPointerUnaligned(tx) }
        let available = tx > rx ? tx - rx : tx &+ self.length &- rx
        if available < ArgoABI.messageHeaderSize { throw .truncatedHeader(available: available) }
        // The header never wraps: rx is 16-aligned and the length a multiple of 16.
        let data = self.base + Int(ArgoABI.ringHeaderSize)
        let header = ArgoMessageHeader(loadingFrom: data + Int(rx))
        if header.length < ArgoABI.messageHeaderSize { throw .headerLengthTooSmall(header.length) }
        if UInt64(header.length) > UInt64(available) {
            throw .headerLengthBeyondData(length: header.length, available: available)
        }
        let payloadLength = Int(header.length - ArgoABI.messageHeaderSize)
        var start = Int(rx) + Int(ArgoABI.messageHeaderSize)
        if start == Int(self.length) { start = 0 }
        let firstLength = min(payloadLength, Int(self.length) - start)
        let first = UnsafeRawBufferPointer(start: data + start, count: firstLength)
        let second = UnsafeRawBufferPointer(start: data, count: payloadLength - firstLength)
        var next = UInt64(rx) + UInt64(ArgoABI.roundUpToSlot(header.length))
        if next >= UInt64(self.length) { next -= UInt64(self.length) }
        return Message(header: header, first: first, second: second, nextRxPointer: UInt32(next))
    }

    /// Releases a message's slots to the hypervisor (full barrier, then one 32-bit store).
    public mutating func consume(_ message: Message) {
        chmx_full_fence()
        self.rxPointer = message.nextRxPointer
        chmx_store_release_u32(self.base, message.nextRxPointer)
    }

    /// Discards everything in the ring (used after corruption): rx_ptr := tx_ptr,
    /// or 0 if tx_ptr itself is unusable.
    public mutating func flush() {
        var tx = chmx_load_acquire_u32(self.base + 4)
        if tx >= self.length || tx % 16 != 0 { tx = 0 }
        chmx_full_fence()
        self.rxPointer = tx
        chmx_store_release_u32(self.base, tx)
    }
}
