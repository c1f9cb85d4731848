// SPDX-License-Identifier: Apache-2.0
import CHMXShims

/// The hypervisor's side of an Argo ring: what Xen does in `ringbuf_insert`.
///
/// The ring memory belongs to the receiving domain and is given as a list of 4 KiB
/// pages (the frames named at registration), so the writer works page by page like
/// Xen's `memcpy_to_guest_ring`. The receiver controls `rx_ptr` and may write
/// anything there; the writer only ever uses a sanitised copy of it and keeps its
/// own private `tx_ptr`, so a hostile receiver can corrupt only its own ring.
///
/// ```
///  page 0                                         page 1 ...
///  +--------+--------+----------+--------------------------------------------
///  | rx_ptr | tx_ptr | reserved | data[0 ..< length]  (messages, 16-aligned)
///  +--------+--------+----------+--------------------------------------------
///  0        4        8          64
/// ```
public struct RingWriter {
    /// The ring's data length in bytes (a multiple of 16).
    public let length: UInt32
    /// The hypervisor's private copy of tx_ptr.
    public private(set) var txPointer: UInt32
    @usableFromInline let pages: [UnsafeMutableRawPointer]
    @usableFromInline let contiguousBase: UnsafeMutableRawPointer?

    /// The outcome of an insert.
    public enum InsertError: Error, Equatable {
        /// The message can never fit this ring.
        case messageTooLarge
        /// Not enough free space now.
        case noSpace
        /// An iov points outside the sender's memory.
        case badAddress
    }

    /// One piece of payload: a readable pointer, or `nil` for a guest address that
    /// cannot be read (reported as EFAULT when the writer reaches it, as Xen does).
    public struct Piece {
        public var pointer: UnsafeRawPointer?
        public var length: UInt32
        public init(pointer: UnsafeRawPointer?, length: UInt32) {
            self.pointer = pointer
            self.length = length
        }
    }

    /// Takes over a ring at (re)registration time.
    ///
    /// Keeps the tx_ptr found in memory if it is 16-aligned and below `length`;
    /// otherwise "flushes" the ring by moving tx_ptr to the rounded-up rx_ptr (or 0),
    /// exactly as `register_ring` does.
    /// - Parameters:
    ///   - pages: the ring's frames, in order; each must be 4096 bytes and there must be
    ///     exactly ``ArgoABI/pagesForRing(length:)`` of them.
    ///   - length: the validated ring length.
    public init(pages: [UnsafeMutableRawPointer], length: UInt32) {
        precondition(UInt64(pages.count) == ArgoABI.pagesForRing(length: length))
        self.pages = pages
        self.length = length
        var contiguous = true
        for (index, page) in pages.enumerated() where page != pages[0] + index * ArgoABI.pageSize {
            contiguous = false
            break
        }
        self.contiguousBase = contiguous ? pages[0] : nil
        var tx = chmx_load_acquire_u32(pages[0] + 4)
        if tx >= length || ArgoABI.roundUpToSlot(tx) != tx {
            tx = ArgoABI.roundUpToSlot(chmx_load_acquire_u32(pages[0]))
            if tx >= length { tx = 0 }
            chmx_store_release_u32(pages[0] + 4, tx)
        }
        self.txPointer = tx
    }

    /// rx_ptr as the receiver left it, rounded up to a slot and wrapped to 0 if out of range.
    public var sanitizedRxPointer: UInt32 {
        var rx = ArgoABI.roundUpToSlot(chmx_load_acquire_u32(self.pages[0]))
        if rx >= self.length { rx = 0 }
        return rx
    }

    /// The largest payload that fits right now (`ringbuf_payload_space`).
    public var payloadSpace: UInt32 {
        let rx = Int64(self.sanitizedRxPointer)
        var space = rx - Int64(self.txPointer)
        if space <= 0 { space += Int64(self.length) }
        space -= Int64(ArgoABI.messageHeaderSize) + Int64(ArgoABI.messageSlotSize)
        return space < 0 ? 0 : UInt32(space)
    }

    /// The largest payload the ring can ever take (`len - 32`).
    public var maximumMessageSize: UInt32 { ArgoABI.maximumPayload(ringLength: self.length) }

    /// Writes one message: header, then the pieces, wrapping at the end of the ring,
    /// then publishes the new tx_ptr with release semantics. Nothing becomes visible to
    /// the receiver unless the whole message was written.
    /// - Parameters:
    ///   - source: the authenticated source address to stamp in the header.
    ///   - messageType: copied into the header.
    ///   - payloadLength: the sum of the pieces' lengths (already bounded by the caller).
    public mutating func insert(
        source: ArgoAddr,
        messageType: UInt32,
        payloadLength: UInt32,
        pieces: UnsafeBufferPointer<Piece>
    ) -> Result<Void, InsertError> {
        let header = ArgoABI.messageHeaderSize
        if UInt64(self.length) <= UInt64(header) + UInt64(ArgoABI.roundUpToSlot(payloadLength)) {
            return .failure(.messageTooLarge)
        }
        let rx = self.sanitizedRxPointer
        var tx = self.txPointer
        let space: UInt32
        if rx == tx {
            space = self.length
        } else {
            space = rx > tx ? rx - tx : rx &+ self.length &- tx
        }
        if UInt64(ArgoABI.roundUpToSlot(payloadLength)) + UInt64(header) >= UInt64(space) {
            return .failure(.noSpace)
        }

        var headerBytes: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &headerBytes) { raw in
            ArgoMessageHeader(length: payloadLength + header, source: source, messageType: messageType)
                .store(to: raw.baseAddress!)
            self.copyIn(offset: tx, from: UnsafeRawPointer(raw.baseAddress!), count: Int(header))
        }
        tx += header
        if tx == self.length { tx = 0 }

        for piece in pieces {
            var remaining = piece.length
            if remaining == 0 { continue }
            guard var source = piece.pointer else { return .failure(.badAddress) }
            let tail = self.length - tx
            if remaining > tail {
                self.copyIn(offset: tx, from: source, count: Int(tail))
                source += Int(tail)
                remaining -= tail
                tx = 0
            }
            self.copyIn(offset: tx, from: source, count: Int(remaining))
            tx += remaining
            if tx == self.length { tx = 0 }
        }
        tx = ArgoABI.roundUpToSlot(tx)
        if tx >= self.length { tx -= self.length }
        self.txPointer = tx
        chmx_store_release_u32(self.pages[0] + 4, tx)
        return .success(())
    }

    /// Copies bytes to data offset `offset` (which, with `count`, never passes the end of
    /// the data area: callers split at the wrap point).
    @inlinable
    func copyIn(offset: UInt32, from source: UnsafeRawPointer, count: Int) {
        var absolute = Int(ArgoABI.ringHeaderSize) + Int(offset)
        if let base = self.contiguousBase {
            (base + absolute).copyMemory(from: source, byteCount: count)
            return
        }
        var done = 0
        while done < count {
            let page = absolute >> 12
            let within = absolute & (ArgoABI.pageSize - 1)
            let chunk = min(ArgoABI.pageSize - within, count - done)
            (self.pages[page] + within).copyMemory(from: source + done, byteCount: chunk)
            done += chunk
            absolute += chunk
        }
    }
}
