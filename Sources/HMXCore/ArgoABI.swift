// SPDX-License-Identifier: Apache-2.0

/// Constants of Xen's Argo ABI (`xen/include/public/argo.h`, `xen/common/argo.c`).
///
/// The test suite checks every value here against the compiled C header shipped by
/// libxen-dev, so the emulator and the Xen backend cannot drift from the real ABI.
public enum ArgoABI {
    /// `__HYPERVISOR_argo_op`.
    public static let hypercallNumber: UInt64 = 39
    /// `VIRQ_ARGO`: the per-domain virtual interrupt raised for Argo events.
    public static let virqArgo: UInt32 = 11

    /// Sub-operations of `argo_op`.
    public enum Op {
        public static let registerRing: UInt32 = 1
        public static let unregisterRing: UInt32 = 2
        public static let sendv: UInt32 = 3
        public static let notify: UInt32 = 4
    }

    /// `XEN_ARGO_MSG_SLOT_SIZE`: messages start on 16-byte boundaries.
    public static let messageSlotSize: UInt32 = 16
    /// Size of `xen_argo_ring` (rx_ptr, tx_ptr, reserved) before the ring data.
    public static let ringHeaderSize: UInt32 = 64
    /// Size of `xen_argo_ring_message_header`.
    public static let messageHeaderSize: UInt32 = 16
    /// `XEN_ARGO_MAX_RING_SIZE` (nominal; see ``maximumUsableRingLength``).
    public static let maximumRingSize: UInt32 = 0x100_0000
    /// The smallest ring length `register_ring` accepts: one header and two slots.
    public static let minimumRingLength: UInt32 = 48
    /// The largest ring length that `register_ring` can accept: `npages` is capped at 4096.
    public static let maximumUsableRingLength: UInt32 = 0xFF_FFC0
    /// `XEN_ARGO_DOMID_ANY` as a raw value.
    public static let domidAny: UInt16 = 0x7FF4
    /// `XEN_ARGO_MAXIOV`.
    public static let maximumIOVs: Int = 8
    /// `MAX_ARGO_MESSAGE_SIZE`: the global cap on one message's payload.
    public static let maximumMessageSize: UInt32 = 0x100_0000 - 32
    /// `MAX_RINGS_PER_DOMAIN`.
    public static let maximumRingsPerDomain: Int = 128
    /// `MAX_PENDING_PER_RING`: distinct domains that may wait for space on one ring.
    public static let maximumPendingPerRing: Int = 32
    /// `MAX_NOTIFY_COUNT`: entries accepted by one notify call.
    public static let maximumNotifyCount: UInt32 = 256
    /// Frames are 4 KiB for the Argo ABI on every architecture.
    public static let pageSize: Int = 4096
    /// Upper bound on the `npages` argument of `register_ring`.
    public static let maximumRingPages: UInt64 = 4096

    /// `XEN_ARGO_REGISTER_FLAG_FAIL_EXIST`.
    public static let registerFlagFailExist: UInt64 = 0x1

    /// Flags returned by notify in `xen_argo_ring_data_ent.flags`.
    public struct RingFlags: OptionSet, Sendable, Hashable, CustomStringConvertible {
        public var rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let exists = RingFlags(rawValue: 1 << 0)
        public static let shared = RingFlags(rawValue: 1 << 1)
        public static let empty = RingFlags(rawValue: 1 << 2)
        public static let sufficient = RingFlags(rawValue: 1 << 3)
        public static let messageTooLarge = RingFlags(rawValue: 1 << 4)
        public static let busy = RingFlags(rawValue: 1 << 5)

        public var description: String {
            var names: [String] = []
            if self.contains(.exists) { names.append("EXISTS") }
            if self.contains(.shared) { names.append("SHARED") }
            if self.contains(.empty) { names.append("EMPTY") }
            if self.contains(.sufficient) { names.append("SUFFICIENT") }
            if self.contains(.messageTooLarge) { names.append("EMSGSIZE") }
            if self.contains(.busy) { names.append("EBUSY") }
            return names.isEmpty ? "0" : names.joined(separator: "|")
        }
    }

    /// Rounds a length up to the message slot size (`ROUNDUP_MESSAGE`).
    @inlinable
    public static func roundUpToSlot(_ value: UInt32) -> UInt32 {
        (value &+ 15) & ~15
    }

    /// Pages needed by a ring of `length` bytes (`NPAGES_RING`).
    @inlinable
    public static func pagesForRing(length: UInt32) -> UInt64 {
        let bytes = UInt64(roundUpToSlot(length)) + UInt64(ringHeaderSize)
        return (bytes + UInt64(pageSize) - 1) / UInt64(pageSize)
    }

    /// The largest payload a ring of `length` bytes can ever take (`len - 32`).
    @inlinable
    public static func maximumPayload(ringLength length: UInt32) -> UInt32 {
        length >= 32 ? length - messageHeaderSize - messageSlotSize : 0
    }

    /// The ring length that exactly fills `pages` pages.
    @inlinable
    public static func ringLength(fillingPages pages: Int) -> UInt32 {
        UInt32(pages * pageSize) - ringHeaderSize
    }
}

/// Message types used on Argo rings.
public enum HMXMessageType {
    /// OpenXT's datagram protocol type (`ARGO_PROTO_DGRAM`); hmx-cat uses it for datagrams.
    public static let datagram: UInt32 = 0x6447_724D
}
