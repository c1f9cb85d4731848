// SPDX-License-Identifier: Apache-2.0
import CXenABI
import HMXCore
import Testing

/// HMXCore's Argo numbers and layouts against Xen's own `xen/argo.h` (libxen-dev),
/// compiled by the C compiler: nothing here is a copied number.
@Suite("Argo ABI matches xen/argo.h")
struct ABITests {
    static let facts: [String: UInt64] = {
        var table: UnsafePointer<cxen_abi_fact>?
        let count = Int(cxen_abi_facts(&table))
        var facts: [String: UInt64] = [:]
        for index in 0..<count {
            let fact = table![index]
            facts[String(cString: fact.name)] = fact.value
        }
        return facts
    }()

    func fact(_ name: String) -> UInt64 {
        guard let value = Self.facts[name] else {
            Issue.record("no fact \(name) in the C table")
            return .max
        }
        return value
    }

    @Test func constants() {
        #expect(ArgoABI.hypercallNumber == self.fact("hypercall.argo_op"))
        #expect(UInt64(ArgoABI.virqArgo) == self.fact("virq.argo"))
        #expect(UInt64(ArgoABI.Op.registerRing) == self.fact("op.register_ring"))
        #expect(UInt64(ArgoABI.Op.unregisterRing) == self.fact("op.unregister_ring"))
        #expect(UInt64(ArgoABI.Op.sendv) == self.fact("op.sendv"))
        #expect(UInt64(ArgoABI.Op.notify) == self.fact("op.notify"))
        #expect(UInt64(DomainID.any.rawValue) == self.fact("domid.any"))
        #expect(UInt64(ArgoABI.domidAny) == self.fact("domid.any"))
        #expect(UInt64(ArgoABI.maximumRingSize) == self.fact("max_ring_size"))
        #expect(UInt64(ArgoABI.maximumIOVs) == self.fact("maxiov"))
        #expect(UInt64(ArgoABI.messageSlotSize) == self.fact("msg_slot_size"))
        #expect(ArgoABI.registerFlagFailExist == self.fact("register_flag.fail_exist"))
        #expect(UInt64(ArgoABI.RingFlags.exists.rawValue) == self.fact("ring_flag.exists"))
        #expect(UInt64(ArgoABI.RingFlags.shared.rawValue) == self.fact("ring_flag.shared"))
        #expect(UInt64(ArgoABI.RingFlags.empty.rawValue) == self.fact("ring_flag.empty"))
        #expect(UInt64(ArgoABI.RingFlags.sufficient.rawValue) == self.fact("ring_flag.sufficient"))
        #expect(UInt64(ArgoABI.RingFlags.messageTooLarge.rawValue) == self.fact("ring_flag.emsgsize"))
        #expect(UInt64(ArgoABI.RingFlags.busy.rawValue) == self.fact("ring_flag.ebusy"))
        #expect(UInt64(ArgoABI.ringHeaderSize) == self.fact("sizeof.ring"))
        #expect(UInt64(ArgoABI.messageHeaderSize) == self.fact("sizeof.message_header"))
    }

    @Test func errnoValues() {
        let pairs: [(ArgoErrno, String)] = [
            (.EPERM, "EPERM"), (.ENOENT, "ENOENT"), (.ESRCH, "ESRCH"), (.EAGAIN, "EAGAIN"), (.ENOMEM, "ENOMEM"),
            (.EACCES, "EACCES"), (.EFAULT, "EFAULT"), (.EBUSY, "EBUSY"), (.EEXIST, "EEXIST"), (.ENODEV, "ENODEV"),
            (.EINVAL, "EINVAL"), (.ENOSPC, "ENOSPC"), (.ENOSYS, "ENOSYS"), (.EMSGSIZE, "EMSGSIZE"),
            (.EOPNOTSUPP, "EOPNOTSUPP"), (.ECONNREFUSED, "ECONNREFUSED"),
        ]
        for (errno, name) in pairs {
            #expect(UInt64(errno.rawValue) == self.fact("errno.\(name)"), "\(name)")
            #expect(errno.name == name)
        }
    }

    /// Each struct is encoded with distinct field values and every field is found at
    /// the C offset with the C size.
    @Test func structLayouts() {
        #expect(UInt64(ArgoAddr.size) == self.fact("sizeof.addr"))
        #expect(UInt64(ArgoSendAddr.size) == self.fact("sizeof.send_addr"))
        #expect(UInt64(ArgoIOV.size) == self.fact("sizeof.iov"))
        #expect(UInt64(ArgoRegisterRing.size) == self.fact("sizeof.register_ring"))
        #expect(UInt64(ArgoUnregisterRing.size) == self.fact("sizeof.unregister_ring"))
        #expect(UInt64(ArgoRingDataEntry.size) == self.fact("sizeof.ring_data_ent"))
        #expect(UInt64(ArgoRingData.headerSize) == self.fact("sizeof.ring_data"))
        #expect(UInt64(ArgoRingData.headerSize) == self.fact("offsetof.ring_data.data"))
        #expect(UInt64(ArgoMessageHeader.size) == self.fact("sizeof.message_header"))
        #expect(self.fact("sizeof.gfn") == 8)

        self.checkField(ArgoAddr.size, "addr.aport", 4, 0x1122_3344) {
            ArgoAddr(port: 0x1122_3344, domain: 0, pad: 0).store(to: $0)
        }
        self.checkField(ArgoAddr.size, "addr.domain_id", 2, 0x5566) {
            ArgoAddr(port: 0, domain: 0x5566, pad: 0).store(to: $0)
        }
        self.checkField(ArgoAddr.size, "addr.pad", 2, 0x7788) {
            ArgoAddr(port: 0, domain: 0, pad: 0x7788).store(to: $0)
        }
        self.checkField(ArgoSendAddr.size, "send_addr.dst", 4, 0xAABB_CCDD) {
            ArgoSendAddr(source: ArgoAddr(port: 0, domain: 0), destination: ArgoAddr(port: 0xAABB_CCDD, domain: 0))
                .store(to: $0)
        }
        self.checkField(ArgoSendAddr.size, "send_addr.src", 4, 0x0102_0304) {
            ArgoSendAddr(source: ArgoAddr(port: 0x0102_0304, domain: 0), destination: ArgoAddr(port: 0, domain: 0))
                .store(to: $0)
        }
        self.checkField(ArgoIOV.size, "iov.iov_hnd", 8, 0x0102_0304_0506_0708) {
            ArgoIOV(address: 0x0102_0304_0506_0708, length: 0).store(to: $0)
        }
        self.checkField(ArgoIOV.size, "iov.iov_len", 4, 0x0A0B_0C0D) {
            ArgoIOV(address: 0, length: 0x0A0B_0C0D).store(to: $0)
        }
        self.checkField(ArgoIOV.size, "iov.pad", 4, 0x1F2F_3F4F) {
            ArgoIOV(address: 0, length: 0, pad: 0x1F2F_3F4F).store(to: $0)
        }
        self.checkField(ArgoRegisterRing.size, "register_ring.aport", 4, 0x1234_5678) {
            ArgoRegisterRing(port: 0x1234_5678, partner: 0, length: 0).store(to: $0)
        }
        self.checkField(ArgoRegisterRing.size, "register_ring.partner_id", 2, 0x4321) {
            ArgoRegisterRing(port: 0, partner: 0x4321, length: 0).store(to: $0)
        }
        self.checkField(ArgoRegisterRing.size, "register_ring.pad", 2, 0x0F0E) {
            ArgoRegisterRing(port: 0, partner: 0, length: 0, pad: 0x0F0E).store(to: $0)
        }
        self.checkField(ArgoRegisterRing.size, "register_ring.len", 4, 0x00FF_FFC0) {
            ArgoRegisterRing(port: 0, partner: 0, length: 0x00FF_FFC0).store(to: $0)
        }
        self.checkField(ArgoUnregisterRing.size, "unregister_ring.aport", 4, 0x3333_4444) {
            ArgoUnregisterRing(port: 0x3333_4444, partner: 0).store(to: $0)
        }
        self.checkField(ArgoUnregisterRing.size, "unregister_ring.partner_id", 2, 0x5555) {
            ArgoUnregisterRing(port: 0, partner: 0x5555).store(to: $0)
        }
        self.checkField(ArgoUnregisterRing.size, "unregister_ring.pad", 2, 0x6666) {
            ArgoUnregisterRing(port: 0, partner: 0, pad: 0x6666).store(to: $0)
        }
        self.checkField(ArgoRingDataEntry.size, "ring_data_ent.ring", 4, 0x7777_8888) {
            ArgoRingDataEntry(ring: ArgoAddr(port: 0x7777_8888, domain: 0), spaceRequired: 0).store(to: $0)
        }
        self.checkField(ArgoRingDataEntry.size, "ring_data_ent.flags", 2, 0x003F) {
            ArgoRingDataEntry(ring: ArgoAddr(port: 0, domain: 0), flags: 0x3F, spaceRequired: 0).store(to: $0)
        }
        self.checkField(ArgoRingDataEntry.size, "ring_data_ent.pad", 2, 0x9999) {
            ArgoRingDataEntry(ring: ArgoAddr(port: 0, domain: 0), spaceRequired: 0, pad: 0x9999).store(to: $0)
        }
        self.checkField(ArgoRingDataEntry.size, "ring_data_ent.space_required", 4, 0x0BAD_F00D) {
            ArgoRingDataEntry(ring: ArgoAddr(port: 0, domain: 0), spaceRequired: 0x0BAD_F00D).store(to: $0)
        }
        self.checkField(ArgoRingDataEntry.size, "ring_data_ent.max_message_size", 4, 0x00C0_FFEE) {
            ArgoRingDataEntry(ring: ArgoAddr(port: 0, domain: 0), spaceRequired: 0, maxMessageSize: 0x00C0_FFEE).store(
                to: $0
            )
        }
        #expect(UInt64(ArgoRingDataEntry.flagsOffset) == self.fact("offsetof.ring_data_ent.flags"))
        #expect(UInt64(ArgoRingDataEntry.maxMessageSizeOffset) == self.fact("offsetof.ring_data_ent.max_message_size"))
        self.checkField(ArgoMessageHeader.size, "message_header.len", 4, 0x0000_1234) {
            ArgoMessageHeader(length: 0x1234, source: ArgoAddr(port: 0, domain: 0), messageType: 0).store(to: $0)
        }
        self.checkField(ArgoMessageHeader.size, "message_header.source", 4, 0xFEED_BEEF) {
            ArgoMessageHeader(length: 0, source: ArgoAddr(port: 0xFEED_BEEF, domain: 0), messageType: 0).store(to: $0)
        }
        self.checkField(ArgoMessageHeader.size, "message_header.message_type", 4, 0x6447_724D) {
            ArgoMessageHeader(length: 0, source: ArgoAddr(port: 0, domain: 0), messageType: 0x6447_724D).store(to: $0)
        }
        #expect(self.fact("offsetof.ring.rx_ptr") == 0)
        #expect(self.fact("offsetof.ring.tx_ptr") == 4)
    }

    /// Encodes with `store` and checks that the only non-zero bytes are `value` at the
    /// C offset of `field`.
    func checkField(
        _ size: Int,
        _ field: String,
        _ width: Int,
        _ value: UInt64,
        store: (UnsafeMutableRawPointer) -> Void
    ) {
        let offset = Int(self.fact("offsetof.\(field)"))
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { store($0.baseAddress!) }
        var expected = [UInt8](repeating: 0, count: size)
        for index in 0..<width where offset + index < size {
            expected[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index)))
        }
        #expect(bytes == expected, "field \(field) at C offset \(offset)")
    }

    @Test func ringArithmetic() {
        #expect(ArgoABI.pagesForRing(length: 4032) == 1)
        #expect(ArgoABI.pagesForRing(length: 4048) == 2)
        #expect(ArgoABI.ringLength(fillingPages: 32) == 131_008)
        #expect(ArgoABI.pagesForRing(length: ArgoABI.maximumUsableRingLength) == 4096)
        #expect(ArgoABI.pagesForRing(length: ArgoABI.maximumRingSize) == 4097)
        #expect(ArgoABI.maximumPayload(ringLength: 4032) == 4000)
        #expect(ArgoABI.roundUpToSlot(1) == 16 && ArgoABI.roundUpToSlot(16) == 16 && ArgoABI.roundUpToSlot(0) == 0)
    }
}
