// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore
import Testing

/// ``ArgoArguments`` against the argument structures: each test builds the expected
/// bytes independently from ``ArgoSendAddr``, ``ArgoIOV``, ``ArgoRegisterRing``,
/// ``ArgoUnregisterRing``, ``ArgoRingDataEntry`` (whose layouts ``ABITests`` checks
/// against `xen/argo.h`) and compares every byte of the staged area.
@Suite("Argo hypercall arguments")
struct ArgoArgumentsTests {
    /// A guest address far from zero, so that guest addresses cannot be confused with
    /// offsets.
    static let guestBase: UInt64 = 0x7F00_1234_5000

    /// Stages into a buffer filled with 0xA5 (one byte more than `size`, to catch an
    /// overrun) and returns the hypercall and the staged bytes.
    func stage(size: Int, _ body: (ArgoArguments) -> ArgoArguments.Hypercall) -> (ArgoArguments.Hypercall, [UInt8]) {
        var bytes = [UInt8](repeating: 0xA5, count: size + 1)
        let call = bytes.withUnsafeMutableBytes { raw in
            body(ArgoArguments(pointer: raw.baseAddress!, guestAddress: Self.guestBase))
        }
        #expect(bytes[size] == 0xA5, "wrote past the announced size")
        return (call, Array(bytes[0..<size]))
    }

    func expected(size: Int, _ fill: (UnsafeMutableRawPointer) -> Void) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { fill($0.baseAddress!) }
        return bytes
    }

    @Test func sendvLaysOutAddressIOVsAndPaddedPayloads() {
        let payloads: [[UInt8]] = [Array(1...5), [], Array(repeating: 0x42, count: 16), Array(100...132)]
        let iovecs = payloads.map { ByteBuffer(bytes: $0) }
        let size = ArgoArguments.sendvSize(iovecs: iovecs)
        // 16 (send_addr) + 4 × 16 (iovs) + 16 + 0 + 16 + 48 (payloads padded to 16).
        #expect(size == 16 + 64 + 16 + 0 + 16 + 48)
        let destination = HMXAddress(domain: DomainID(7), port: 0xBEEF)
        let (call, bytes) = self.stage(size: size) {
            $0.sendv(from: 0x1234, sourceDomain: .any, to: destination, type: 0x6447_724D, iovecs: iovecs)
        }
        #expect(call.command == ArgoABI.Op.sendv)
        #expect(call.arg1 == Self.guestBase)
        #expect(call.arg2 == Self.guestBase + UInt64(ArgoSendAddr.size))
        #expect(call.arg3 == 4)
        #expect(call.arg4 == 0x6447_724D)
        let want = self.expected(size: size) { pointer in
            ArgoSendAddr(
                source: ArgoAddr(port: 0x1234, domain: ArgoABI.domidAny),
                destination: ArgoAddr(port: 0xBEEF, domain: 7)
            ).store(to: pointer)
            var offset = ArgoSendAddr.size + payloads.count * ArgoIOV.size
            for (index, payload) in payloads.enumerated() {
                ArgoIOV(address: Self.guestBase + UInt64(offset), length: UInt32(payload.count))
                    .store(to: pointer + ArgoSendAddr.size + index * ArgoIOV.size)
                for (byteIndex, byte) in payload.enumerated() {
                    pointer.storeBytes(of: byte, toByteOffset: offset + byteIndex, as: UInt8.self)
                }
                offset += (payload.count + 15) & ~15
            }
        }
        #expect(bytes == want)
    }

    @Test func sendvStampsTheGivenSourceDomainAndNoIOVs() {
        let size = ArgoArguments.sendvSize(iovecs: [])
        #expect(size == ArgoSendAddr.size)
        let (call, bytes) = self.stage(size: size) {
            $0.sendv(
                from: 9,
                sourceDomain: DomainID(3),
                to: HMXAddress(domain: DomainID(4), port: 10),
                type: 0,
                iovecs: []
            )
        }
        #expect(call.command == ArgoABI.Op.sendv && call.arg3 == 0)
        let want = self.expected(size: size) {
            ArgoSendAddr(source: ArgoAddr(port: 9, domain: 3), destination: ArgoAddr(port: 10, domain: 4)).store(to: $0)
        }
        #expect(bytes == want)
    }

    @Test func registerRingLaysOutStructThenFrames() {
        let frames: [UInt64] = [0x1111, 0x2222_3333_4444, 0x5]
        let size = ArgoArguments.registerRingSize(frameCount: frames.count)
        #expect(ArgoArguments.registerRingFramesOffset == 16)
        #expect(size == 16 + 3 * 8)
        let (call, bytes) = self.stage(size: size) {
            $0.registerRing(
                port: 0xAABB_CCDD,
                partner: DomainID(0x22),
                length: 4032,
                frames: frames,
                failIfExists: true
            )
        }
        #expect(call.command == ArgoABI.Op.registerRing)
        #expect(call.arg1 == Self.guestBase)
        #expect(call.arg2 == Self.guestBase + 16)
        #expect(call.arg3 == 3)
        #expect(call.arg4 == ArgoABI.registerFlagFailExist)
        let want = self.expected(size: size) { pointer in
            ArgoRegisterRing(port: 0xAABB_CCDD, partner: 0x22, length: 4032).store(to: pointer)
            for (index, frame) in frames.enumerated() { storeLE(pointer, 16 + index * 8, frame) }
        }
        #expect(bytes == want)
    }

    @Test func registerRingTakesLazyFramesAndNoFlag() {
        let frames = (0..<2).lazy.map { UInt64(40 + $0) }
        let (call, bytes) = self.stage(size: ArgoArguments.registerRingSize(frameCount: 2)) {
            $0.registerRing(port: 1, partner: .any, length: 48, frames: frames, failIfExists: false)
        }
        #expect(call.arg3 == 2 && call.arg4 == 0)
        let want = self.expected(size: 32) { pointer in
            ArgoRegisterRing(port: 1, partner: ArgoABI.domidAny, length: 48).store(to: pointer)
            storeLE(pointer, 16, UInt64(40))
            storeLE(pointer, 24, UInt64(41))
        }
        #expect(bytes == want)
    }

    @Test func unregisterRing() {
        let (call, bytes) = self.stage(size: ArgoArguments.unregisterRingSize) {
            $0.unregisterRing(port: 0x0102_0304, partner: DomainID(0x0506))
        }
        #expect(call.command == ArgoABI.Op.unregisterRing)
        #expect(call.arg1 == Self.guestBase && call.arg2 == 0 && call.arg3 == 0 && call.arg4 == 0)
        let want = self.expected(size: ArgoUnregisterRing.size) {
            ArgoUnregisterRing(port: 0x0102_0304, partner: 0x0506).store(to: $0)
        }
        #expect(bytes == want)
    }

    @Test func notifyLaysOutHeaderAndEntries() {
        let queries = [
            HMXNotifyQuery(ring: HMXAddress(domain: DomainID(2), port: 77), spaceRequired: 4000),
            HMXNotifyQuery(ring: HMXAddress(domain: DomainID(3), port: 0xFFFF_FFFF), spaceRequired: 0),
        ]
        let size = ArgoArguments.notifySize(queryCount: queries.count)
        #expect(size == ArgoRingData.headerSize + 2 * ArgoRingDataEntry.size)
        let (call, bytes) = self.stage(size: size) { $0.notify(queries) }
        #expect(call.command == ArgoABI.Op.notify)
        #expect(call.arg1 == Self.guestBase && call.arg2 == 0 && call.arg3 == 0 && call.arg4 == 0)
        let want = self.expected(size: size) { pointer in
            storeLE(pointer, 0, UInt32(2))
            ArgoRingDataEntry(ring: ArgoAddr(port: 77, domain: 2), spaceRequired: 4000).store(to: pointer + 8)
            ArgoRingDataEntry(ring: ArgoAddr(port: 0xFFFF_FFFF, domain: 3), spaceRequired: 0).store(to: pointer + 28)
        }
        #expect(bytes == want)
    }

    @Test func nullNotifyNeedsNoMemory() {
        #expect(ArgoArguments.notifySize(queryCount: 0) == 0)
        let call = ArgoArguments.nullNotify
        #expect(
            call.command == ArgoABI.Op.notify && call.arg1 == 0 && call.arg2 == 0 && call.arg3 == 0 && call.arg4 == 0
        )
        let (staged, bytes) = self.stage(size: 0) { $0.notify([]) }
        #expect(staged == call)
        #expect(bytes.isEmpty)
    }

    /// The hypervisor's answers (flags, max_message_size) are read back per query.
    @Test func notifyResultsReadWhatTheHypervisorWrote() {
        let queries = [
            HMXNotifyQuery(ring: HMXAddress(domain: DomainID(2), port: 77), spaceRequired: 4000),
            HMXNotifyQuery(ring: HMXAddress(domain: DomainID(3), port: 78), spaceRequired: 1),
        ]
        var bytes = [UInt8](repeating: 0, count: ArgoArguments.notifySize(queryCount: 2))
        let results = bytes.withUnsafeMutableBytes { raw in
            let arguments = ArgoArguments(pointer: raw.baseAddress!, guestAddress: Self.guestBase)
            _ = arguments.notify(queries)
            // What Xen's fill_ring_data writes: flags and max_message_size only.
            let first = raw.baseAddress! + ArgoRingData.headerSize
            storeLE(first, ArgoRingDataEntry.flagsOffset, (ArgoABI.RingFlags.exists.union(.sufficient)).rawValue)
            storeLE(first, ArgoRingDataEntry.maxMessageSizeOffset, UInt32(4000))
            return arguments.notifyResults(for: queries)
        }
        #expect(
            results == [
                HMXNotifyResult(ring: queries[0].ring, flags: [.exists, .sufficient], maxMessageSize: 4000),
                HMXNotifyResult(ring: queries[1].ring, flags: [], maxMessageSize: 0),
            ]
        )
    }
}
