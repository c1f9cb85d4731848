// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// The memory layout of the Argo hypercall arguments, written once for every backend.
///
/// Xen reads hypercall arguments from the caller's memory, so every backend must lay
/// them out the same way: the emulator link in the domain memory it shares with the
/// emulator, the Xen backend in hypercall-safe buffers. Each operation below stores
/// its arguments at ``pointer`` and returns the hypercall to issue, whose pointers are
/// guest addresses computed from ``guestAddress``, the address under which the
/// hypervisor knows ``pointer``. What differs between backends is only those two
/// values and the source domain of sendv:
///
/// ```
///  sendv           | send_addr (16) | iov × n (16 each) | payload 0, padded to 16 | payload 1 ... |
///  register_ring   | register_ring (12) + pad to 16 | gfn × npages (8 each) |
///  unregister_ring | unregister_ring (8) |
///  notify          | ring_data header (8) | ring_data_ent × n (20 each) |   (no memory if n = 0)
/// ```
///
/// Padding is zeroed, so the bytes the hypervisor may read are the arguments and
/// nothing left over from an earlier request.
///
/// - Important: the memory at ``pointer`` must hold the size returned by the matching
///   `…Size` function; nothing here checks it.
public struct ArgoArguments {
    /// `argo_op(command, arg1, arg2, arg3, arg4)`.
    public typealias Hypercall = (command: UInt32, arg1: UInt64, arg2: UInt64, arg3: UInt64, arg4: UInt64)

    /// Where the arguments are written, in this process.
    public var pointer: UnsafeMutableRawPointer
    /// The address of ``pointer`` as the hypervisor sees it: an offset into domain
    /// memory for the emulator, a virtual address for Xen.
    public var guestAddress: UInt64

    public init(pointer: UnsafeMutableRawPointer, guestAddress: UInt64) {
        self.pointer = pointer
        self.guestAddress = guestAddress
    }

    // MARK: - sendv

    /// Bytes needed by ``sendv(from:sourceDomain:to:type:iovecs:)``.
    public static func sendvSize(iovecs: [ByteBuffer]) -> Int {
        var size = ArgoSendAddr.size + iovecs.count * ArgoIOV.size
        for buffer in iovecs { size += Self.roundedUp16(buffer.readableBytes) }
        return size
    }

    /// Stores a sendv: the address pair, one iovec per buffer and the payloads, each
    /// starting on a 16-byte boundary.
    /// - Parameters:
    ///   - sourceDomain: the domain stamped into the source address. Xen replaces
    ///     ``DomainID/any`` with the caller's id; the emulator link passes its own id.
    /// - Precondition: at most ``ArgoABI/maximumIOVs`` buffers (callers reject more
    ///   with EINVAL before staging, as Xen would).
    public func sendv(
        from port: HMXPort,
        sourceDomain: DomainID,
        to destination: HMXAddress,
        type: UInt32,
        iovecs: [ByteBuffer]
    )
        -> Hypercall
    {
        ArgoSendAddr(
            source: ArgoAddr(port: port, domain: sourceDomain.rawValue),
            destination: ArgoAddr(destination)
        ).store(to: self.pointer)
        var offset = ArgoSendAddr.size + iovecs.count * ArgoIOV.size
        for (index, buffer) in iovecs.enumerated() {
            let count = buffer.readableBytes
            buffer.withUnsafeReadableBytes { bytes in
                if count > 0 { (self.pointer + offset).copyMemory(from: bytes.baseAddress!, byteCount: count) }
            }
            let padded = Self.roundedUp16(count)
            if padded > count { Self.zero(self.pointer + offset + count, padded - count) }
            ArgoIOV(address: self.guestAddress + UInt64(offset), length: UInt32(truncatingIfNeeded: count))
                .store(to: self.pointer + ArgoSendAddr.size + index * ArgoIOV.size)
            offset += padded
        }
        return (
            ArgoABI.Op.sendv, self.guestAddress, self.guestAddress + UInt64(ArgoSendAddr.size), UInt64(iovecs.count),
            UInt64(type)
        )
    }

    // MARK: - register_ring

    /// Where the frame array starts: `xen_argo_register_ring` rounded up to 16.
    public static let registerRingFramesOffset = (ArgoRegisterRing.size + 15) & ~15

    /// Bytes needed by ``registerRing(port:partner:length:frames:failIfExists:)``.
    public static func registerRingSize(frameCount: Int) -> Int {
        Self.registerRingFramesOffset + frameCount * 8
    }

    /// Stores a register_ring: the ring's identity and length, then its frame numbers
    /// (`xen_argo_gfn_t`, 8 bytes each). npages is the number of frames given.
    public func registerRing(
        port: HMXPort,
        partner: DomainID,
        length: UInt32,
        frames: some Collection<UInt64>,
        failIfExists: Bool
    )
        -> Hypercall
    {
        ArgoRegisterRing(port: port, partner: partner.rawValue, length: length).store(to: self.pointer)
        let framesOffset = Self.registerRingFramesOffset
        Self.zero(self.pointer + ArgoRegisterRing.size, framesOffset - ArgoRegisterRing.size)
        var count = 0
        for frame in frames {
            storeLE(self.pointer, framesOffset + count * 8, frame)
            count += 1
        }
        return (
            ArgoABI.Op.registerRing, self.guestAddress, self.guestAddress + UInt64(framesOffset), UInt64(count),
            failIfExists ? ArgoABI.registerFlagFailExist : 0
        )
    }

    // MARK: - unregister_ring

    /// Bytes needed by ``unregisterRing(port:partner:)``.
    public static let unregisterRingSize = ArgoUnregisterRing.size

    /// Stores an unregister_ring (arg2..arg4 must be zero).
    public func unregisterRing(port: HMXPort, partner: DomainID) -> Hypercall {
        ArgoUnregisterRing(port: port, partner: partner.rawValue).store(to: self.pointer)
        return (ArgoABI.Op.unregisterRing, self.guestAddress, 0, 0, 0)
    }

    // MARK: - notify

    /// The NULL notify: wakes senders waiting on the caller's rings and queries
    /// nothing, so it needs no memory.
    public static let nullNotify: Hypercall = (ArgoABI.Op.notify, 0, 0, 0, 0)

    /// Bytes needed by ``notify(_:)``: 0 for no queries (the NULL notify).
    public static func notifySize(queryCount: Int) -> Int {
        queryCount == 0 ? 0 : ArgoRingData.headerSize + queryCount * ArgoRingDataEntry.size
    }

    /// Stores a notify: the `xen_argo_ring_data` header and one entry per query, whose
    /// output fields start at zero. With no queries nothing is stored and this is
    /// ``nullNotify``.
    public func notify(_ queries: [HMXNotifyQuery]) -> Hypercall {
        if queries.isEmpty { return Self.nullNotify }
        storeLE(self.pointer, 0, UInt32(truncatingIfNeeded: queries.count))
        storeLE(self.pointer, 4, UInt32(0))
        for (index, query) in queries.enumerated() {
            ArgoRingDataEntry(ring: ArgoAddr(query.ring), spaceRequired: query.spaceRequired)
                .store(to: self.pointer + ArgoRingData.headerSize + index * ArgoRingDataEntry.size)
        }
        return (ArgoABI.Op.notify, self.guestAddress, 0, 0, 0)
    }

    /// Reads back what a successful notify wrote into the entries stored by
    /// ``notify(_:)`` (Xen fills in only `flags` and `max_message_size`).
    /// - Parameter queries: the queries passed to ``notify(_:)``, in the same order.
    public func notifyResults(for queries: [HMXNotifyQuery]) -> [HMXNotifyResult] {
        var results: [HMXNotifyResult] = []
        results.reserveCapacity(queries.count)
        for (index, query) in queries.enumerated() {
            let entry = ArgoRingDataEntry(
                loadingFrom: self.pointer + ArgoRingData.headerSize + index * ArgoRingDataEntry.size
            )
            results.append(
                HMXNotifyResult(
                    ring: query.ring,
                    flags: ArgoABI.RingFlags(rawValue: entry.flags),
                    maxMessageSize: entry.maxMessageSize
                )
            )
        }
        return results
    }

    @inline(__always)
    private static func zero(_ pointer: UnsafeMutableRawPointer, _ count: Int) {
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: count)
    }

    @inline(__always)
    private static func roundedUp16(_ value: Int) -> Int { (value + 15) & ~15 }
}
