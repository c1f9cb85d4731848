// SPDX-License-Identifier: Apache-2.0

// The argument structures of the Argo hypercall, with their exact byte layouts
// (little-endian, natural alignment; see xen/include/public/argo.h). Each type can
// be read from and written to raw guest memory. Reading never traps: callers pass
// buffers whose size they have checked against `size`.

@inlinable
public func loadLE<T: FixedWidthInteger>(_ base: UnsafeRawPointer, _ offset: Int, as: T.Type) -> T {
    T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
}

@inlinable
public func storeLE<T: FixedWidthInteger>(_ base: UnsafeMutableRawPointer, _ offset: Int, _ value: T) {
    base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
}

/// `xen_argo_addr`: 8 bytes.
public struct ArgoAddr: Hashable, Sendable {
    public static let size = 8
    public var port: UInt32
    public var domain: UInt16
    public var pad: UInt16

    public init(port: UInt32, domain: UInt16, pad: UInt16 = 0) {
        self.port = port
        self.domain = domain
        self.pad = pad
    }

    public init(_ address: HMXAddress) {
        self.init(port: address.port, domain: address.domain.rawValue)
    }

    public init(loadingFrom p: UnsafeRawPointer) {
        self.port = loadLE(p, 0, as: UInt32.self)
        self.domain = loadLE(p, 4, as: UInt16.self)
        self.pad = loadLE(p, 6, as: UInt16.self)
    }

    public func store(to p: UnsafeMutableRawPointer) {
        storeLE(p, 0, self.port)
        storeLE(p, 4, self.domain)
        storeLE(p, 6, self.pad)
    }

    public var address: HMXAddress { HMXAddress(domain: DomainID(self.domain), port: self.port) }
}

/// `xen_argo_send_addr`: source then destination, 16 bytes.
public struct ArgoSendAddr: Hashable, Sendable {
    public static let size = 16
    public var source: ArgoAddr
    public var destination: ArgoAddr

    public init(source: ArgoAddr, destination: ArgoAddr) {
        self.source = source
        self.destination = destination
    }

    public init(loadingFrom p: UnsafeRawPointer) {
        self.source = ArgoAddr(loadingFrom: p)
        self.destination = ArgoAddr(loadingFrom: p + 8)
    }

    public func store(to p: UnsafeMutableRawPointer) {
        self.source.store(to: p)
        self.destination.store(to: p + 8)
    }
}

/// `xen_argo_iov`: a guest address and a length, 16 bytes.
public struct ArgoIOV: Hashable, Sendable {
    public static let size = 16
    public var address: UInt64
    public var length: UInt32
    public var pad: UInt32

    public init(address: UInt64, length: UInt32, pad: UInt32 = 0) {
        self.address = address
        self.length = length
        self.pad = pad
    }

    public init(loadingFrom p: UnsafeRawPointer) {
        self.address = loadLE(p, 0, as: UInt64.self)
        self.length = loadLE(p, 8, as: UInt32.self)
        self.pad = loadLE(p, 12, as: UInt32.self)
    }

    public func store(to p: UnsafeMutableRawPointer) {
        storeLE(p, 0, self.address)
        storeLE(p, 8, self.length)
        storeLE(p, 12, self.pad)
    }
}

/// `xen_argo_register_ring`: 12 bytes.
public struct ArgoRegisterRing: Hashable, Sendable {
    public static let size = 12
    public var port: UInt32
    public var partner: UInt16
    public var pad: UInt16
    public var length: UInt32

    public init(port: UInt32, partner: UInt16, length: UInt32, pad: UInt16 = 0) {
        self.port = port
        self.partner = partner
        self.pad = pad
        self.length = length
    }

    public init(loadingFrom p: UnsafeRawPointer) {
        self.port = loadLE(p, 0, as: UInt32.self)
        self.partner = loadLE(p, 4, as: UInt16.self)
        self.pad = loadLE(p, 6, as: UInt16.self)
        self.length = loadLE(p, 8, as: UInt32.self)
    }

    public func store(to p: UnsafeMutableRawPointer) {
        storeLE(p, 0, self.port)
        storeLE(p, 4, self.partner)
        storeLE(p, 6, self.pad)
        storeLE(p, 8, self.length)
    }
}

/// `xen_argo_unregister_ring`: 8 bytes.
public struct ArgoUnregisterRing: Hashable, Sendable {
    public static let size = 8
    public var port: UInt32
    public var partner: UInt16
    public var pad: UInt16

    public init(port: UInt32, partner: UInt16, pad: UInt16 = 0) {
        self.port = port
        self.partner = partner
        self.pad = pad
    }

    public init(loadingFrom p: UnsafeRawPointer) {
        self.port = loadLE(p, 0, as: UInt32.self)
        self.partner = loadLE(p, 4, as: UInt16.self)
        self.pad = loadLE(p, 6, as: UInt16.self)
    }

    public func store(to p: UnsafeMutableRawPointer) {
        storeLE(p, 0, self.port)
        storeLE(p, 4, self.partner)
        storeLE(p, 6, self.pad)
    }
}

/// `xen_argo_ring_data_ent`: 20 bytes. Xen writes back only `flags` and `maxMessageSize`.
public struct ArgoRingDataEntry: Hashable, Sendable {
    public static let size = 20
    public static let flagsOffset = 8
    public static let maxMessageSizeOffset = 16
    public var ring: ArgoAddr
    public var flags: UInt16
    public var pad: UInt16
    public var spaceRequired: UInt32
    public var maxMessageSize: UInt32

    public init(ring: ArgoAddr, flags: UInt16 = 0, spaceRequired: UInt32, maxMessageSize: UInt32 = 0, pad: UInt16 = 0) {
        self.ring = ring
        self.flags = flags
        self.pad = pad
        self.spaceRequired = spaceRequired
        self.maxMessageSize = maxMessageSize
    }

    public init(loadingFrom p: UnsafeRawPointer) {
        self.ring = ArgoAddr(loadingFrom: p)
        self.flags = loadLE(p, 8, as: UInt16.self)
        self.pad = loadLE(p, 10, as: UInt16.self)
        self.spaceRequired = loadLE(p, 12, as: UInt32.self)
        self.maxMessageSize = loadLE(p, 16, as: UInt32.self)
    }

    public func store(to p: UnsafeMutableRawPointer) {
        self.ring.store(to: p)
        storeLE(p, 8, self.flags)
        storeLE(p, 10, self.pad)
        storeLE(p, 12, self.spaceRequired)
        storeLE(p, 16, self.maxMessageSize)
    }
}

/// `xen_argo_ring_data` header: `nent` then `pad`, followed by `nent` entries.
public enum ArgoRingData {
    public static let headerSize = 8
}

/// `xen_argo_ring_message_header`: 16 bytes in front of every message in a ring.
public struct ArgoMessageHeader: Hashable, Sendable {
    public static let size = 16
    /// Payload length plus 16 (not rounded).
    public var length: UInt32
    public var source: ArgoAddr
    public var messageType: UInt32

    public init(length: UInt32, source: ArgoAddr, messageType: UInt32) {
        self.length = length
        self.source = source
        self.messageType = messageType
    }

    public init(loadingFrom p: UnsafeRawPointer) {
        self.length = loadLE(p, 0, as: UInt32.self)
        self.source = ArgoAddr(loadingFrom: p + 4)
        self.messageType = loadLE(p, 12, as: UInt32.self)
    }

    public func store(to p: UnsafeMutableRawPointer) {
        storeLE(p, 0, self.length)
        self.source.store(to: p + 4)
        storeLE(p, 12, self.messageType)
    }
}
