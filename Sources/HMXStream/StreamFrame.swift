// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore

/// The HMX stream protocol's frames (docs/PROTOCOL.md). One Argo message of type
/// ``StreamFrame/messageType`` carries one or more frames back to back.
///
/// ```
///  0      1      2          4                8            12           16
///  +------+------+----------+----------------+------------+------------+-------------+
///  | type | flags| reserved | connection id  | body length| value      | body ...    |
///  +------+------+----------+----------------+------------+------------+-------------+
///  little-endian; reserved = 0; flags bit 0 = the sender of this frame opened the connection
/// ```
public enum StreamFrame: Equatable, Sendable {
    /// Argo message type of stream messages ("HMXS").
    public static let messageType: UInt32 = 0x5358_4D48
    /// Protocol version carried by OPEN. Version 2 added SEQUENCE (several messages in
    /// flight per peer).
    public static let version: UInt16 = 2
    public static let headerSize = 16
    /// Largest DATA body. Keeps one frame well inside the smallest useful ring.
    public static let maximumDataLength = 65536
    /// Largest DGRAM body: a UDP datagram (65,507 bytes) fits, and so does a Unix
    /// datagram of up to 64 KiB.
    public static let maximumDatagramLength = 65536
    /// Largest caller block of an OPEN.
    public static let maximumCallerLength = 1024

    /// Identifies a connection within one peer: the id chosen by the opener and
    /// which side opened it.
    public struct ConnectionKey: Hashable, Sendable, CustomStringConvertible {
        public var id: UInt32
        /// True if *this* gateway opened the connection.
        public var openedLocally: Bool

        public init(id: UInt32, openedLocally: Bool) {
            self.id = id
            self.openedLocally = openedLocally
        }

        public var description: String { "\(self.openedLocally ? "L" : "R")\(self.id)" }
    }

    /// `records`: the opener's socket is a SEQPACKET one (its stream carries records,
    /// each after its length), so only a SEQPACKET export may take it. `caller`: who a
    /// caller from another host is, as the opener (a relay) asserts it: opaque here,
    /// at most ``maximumCallerLength`` bytes.
    case open(
        id: UInt32,
        servicePort: UInt32,
        initialCredit: UInt32,
        instance: UInt64,
        version: UInt16 = StreamFrame.version,
        records: Bool = false,
        caller: ByteBuffer? = nil
    )
    case accept(key: ConnectionKey, initialCredit: UInt32, instance: UInt64)
    case refuse(key: ConnectionKey, reason: RefuseReason)
    case data(key: ConnectionKey, payload: ByteBuffer)
    case credit(key: ConnectionKey, increment: UInt32)
    case fin(key: ConnectionKey)
    case reset(key: ConnectionKey, reason: ResetReason)
    case ping(instance: UInt64, nonce: UInt64)
    case pong(instance: UInt64, nonce: UInt64)
    /// First frame of every message: the message's number in the sender's sequence
    /// for this peer, the oldest number the sender has not yet seen delivered (`base`,
    /// at most ``MessageOrder/window`` - 1 behind), and the sender's instance id.
    case sequence(number: UInt32, base: UInt32, instance: UInt64)
    /// One application datagram of a flow (a datagram mapping). `key` names the flow
    /// (its id chosen by the importing gateway, which opened it); `servicePort` is the
    /// export's port when the opener sends (0 in replies). The body may be empty.
    case datagram(key: ConnectionKey, servicePort: UInt32, payload: ByteBuffer)
    /// The flow is gone (nil: it ended, idle or closed) or was refused (the reason): the
    /// other side forgets it.
    case datagramClose(key: ConnectionKey, reason: RefuseReason?)

    enum Kind: UInt8 {
        case open = 1
        case accept = 2
        case refuse = 3
        case data = 4
        case credit = 5
        case fin = 6
        case reset = 7
        case ping = 8
        case pong = 9
        case sequence = 10
        case datagram = 11
        case datagramClose = 12
    }

    /// Why a connection was refused.
    public enum RefuseReason: UInt32, Sendable, CustomStringConvertible {
        case noSuchService = 1
        case deniedByGateway = 2
        case targetRefused = 3
        case targetTimedOut = 4
        case limitReached = 5
        case shuttingDown = 6
        case protocolError = 7
        case unsupportedVersion = 8

        public var description: String {
            switch self {
            case .noSuchService: "no export at that port"
            case .deniedByGateway: "denied by the exporting gateway's allow-list"
            case .targetRefused: "the export's target refused the connection"
            case .targetTimedOut: "the export's target did not answer in time"
            case .limitReached: "the export's connection limit is reached"
            case .shuttingDown: "the exporting gateway is shutting down"
            case .protocolError: "protocol error"
            case .unsupportedVersion: "unsupported protocol version"
            }
        }
    }

    /// Why a connection was reset.
    public enum ResetReason: UInt32, Sendable, CustomStringConvertible {
        case applicationReset = 1
        case protocolViolation = 2
        case flowControlViolation = 3
        case peerRestarted = 4
        case idleTimeout = 5
        case shuttingDown = 6
        case unknownConnection = 7
        case linkFailure = 8

        public var description: String {
            switch self {
            case .applicationReset: "the application reset the connection"
            case .protocolViolation: "protocol violation"
            case .flowControlViolation: "data beyond the granted credit"
            case .peerRestarted: "the peer gateway restarted"
            case .idleTimeout: "idle timeout"
            case .shuttingDown: "gateway shutting down"
            case .unknownConnection: "no such connection"
            case .linkFailure: "the HMX link to the peer failed"
            }
        }
    }

    /// Errors in a frame from the peer. All are fatal for the message they are in.
    public enum ParseError: Error, Equatable, Sendable {
        case truncatedHeader
        case truncatedBody
        case nonZeroReserved
        case unknownType(UInt8)
        case unknownFlags(UInt8)
        case badBodyLength(type: UInt8, length: UInt32)
        case unknownReason(UInt32)
        case zeroLengthData
    }

    // MARK: - Encoding

    /// Appends this frame to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .open(let id, let servicePort, let initialCredit, let instance, let version, let records, let caller):
            let callerLength = UInt32(caller?.readableBytes ?? 0)
            Self.writeHeader(&buffer, .open, opener: true, id: id, length: 16 + callerLength, value: servicePort)
            buffer.writeInteger(version, endianness: .little)
            buffer.writeInteger(UInt16(records ? 1 : 0) | (caller != nil ? 2 : 0), endianness: .little)
            buffer.writeInteger(initialCredit, endianness: .little)
            buffer.writeInteger(instance, endianness: .little)
            if let caller { buffer.writeImmutableBuffer(caller) }
        case .accept(let key, let initialCredit, let instance):
            Self.writeHeader(&buffer, .accept, key: key, length: 8, value: initialCredit)
            buffer.writeInteger(instance, endianness: .little)
        case .refuse(let key, let reason):
            Self.writeHeader(&buffer, .refuse, key: key, length: 0, value: reason.rawValue)
        case .data(let key, let payload):
            Self.writeHeader(&buffer, .data, key: key, length: UInt32(payload.readableBytes), value: 0)
            buffer.writeImmutableBuffer(payload)
        case .credit(let key, let increment):
            Self.writeHeader(&buffer, .credit, key: key, length: 0, value: increment)
        case .fin(let key):
            Self.writeHeader(&buffer, .fin, key: key, length: 0, value: 0)
        case .reset(let key, let reason):
            Self.writeHeader(&buffer, .reset, key: key, length: 0, value: reason.rawValue)
        case .ping(let instance, let nonce):
            Self.writeHeader(&buffer, .ping, opener: false, id: 0, length: 16, value: 0)
            buffer.writeInteger(instance, endianness: .little)
            buffer.writeInteger(nonce, endianness: .little)
        case .pong(let instance, let nonce):
            Self.writeHeader(&buffer, .pong, opener: false, id: 0, length: 16, value: 0)
            buffer.writeInteger(instance, endianness: .little)
            buffer.writeInteger(nonce, endianness: .little)
        case .sequence(let number, let base, let instance):
            Self.writeHeader(&buffer, .sequence, opener: false, id: 0, length: 16, value: number)
            buffer.writeInteger(instance, endianness: .little)
            buffer.writeInteger(base, endianness: .little)
            buffer.writeInteger(UInt32(0), endianness: .little)
        case .datagram(_, _, let payload):
            self.encodeHeader(into: &buffer)
            buffer.writeImmutableBuffer(payload)
        case .datagramClose(let key, let reason):
            Self.writeHeader(&buffer, .datagramClose, key: key, length: 0, value: reason?.rawValue ?? 0)
        }
    }

    /// For a DATA frame, its payload (which the sender can hand to sendv as an iovec
    /// of its own instead of copying it); nil for every other frame.
    public var dataPayload: ByteBuffer? {
        switch self {
        case .data(_, let payload), .datagram(_, _, let payload): payload
        default: nil
        }
    }

    /// Appends this frame without its DATA payload: the whole of any other frame, only
    /// the header of a DATA frame (whose payload must follow it on the wire).
    public func encodeHeader(into buffer: inout ByteBuffer) {
        switch self {
        case .data(let key, let payload):
            Self.writeHeader(&buffer, .data, key: key, length: UInt32(payload.readableBytes), value: 0)
        case .datagram(let key, let servicePort, let payload):
            Self.writeHeader(
                &buffer,
                .datagram,
                key: key,
                length: UInt32(payload.readableBytes),
                value: servicePort
            )
        default:
            self.encode(into: &buffer)
        }
    }

    /// Bytes this frame takes on the wire.
    public var encodedLength: Int {
        switch self {
        case .open(_, _, _, _, _, _, let caller): Self.headerSize + 16 + (caller?.readableBytes ?? 0)
        case .accept: Self.headerSize + 8
        case .ping, .pong, .sequence: Self.headerSize + 16
        case .data(_, let payload), .datagram(_, _, let payload): Self.headerSize + payload.readableBytes
        case .refuse, .credit, .fin, .reset, .datagramClose: Self.headerSize
        }
    }

    private static func writeHeader(
        _ buffer: inout ByteBuffer,
        _ kind: Kind,
        key: ConnectionKey,
        length: UInt32,
        value: UInt32
    ) {
        // On the wire the flag says whether the *sender* opened the connection.
        self.writeHeader(&buffer, kind, opener: key.openedLocally, id: key.id, length: length, value: value)
    }

    private static func writeHeader(
        _ buffer: inout ByteBuffer,
        _ kind: Kind,
        opener: Bool,
        id: UInt32,
        length: UInt32,
        value: UInt32
    ) {
        buffer.writeInteger(kind.rawValue)
        buffer.writeInteger(opener ? UInt8(1) : 0)
        buffer.writeInteger(UInt16(0), endianness: .little)
        buffer.writeInteger(id, endianness: .little)
        buffer.writeInteger(length, endianness: .little)
        buffer.writeInteger(value, endianness: .little)
    }

    // MARK: - Parsing

    /// Parses the next frame of a message received from a peer. Connection keys are
    /// turned around: a frame whose sender opened the connection names a connection
    /// that *we* did not open. DATA bodies are slices of `buffer` (no copy).
    /// - Returns: `nil` when the buffer is empty.
    public static func parse(_ buffer: inout ByteBuffer) throws(ParseError) -> StreamFrame? {
        if buffer.readableBytes == 0 { return nil }
        guard buffer.readableBytes >= Self.headerSize else { throw .truncatedHeader }
        // The header and the first 16 bytes after it in one look at the bytes (reading
        // field by field checks the buffer again for each).
        let fields = buffer.withUnsafeReadableBytes { RawFields($0) }
        let (rawKind, flags, reserved) = (fields.kind, fields.flags, fields.reserved)
        let (id, length, value) = (fields.id, fields.length, fields.value)
        guard reserved == 0 else { throw .nonZeroReserved }
        guard let kind = Kind(rawValue: rawKind) else { throw .unknownType(rawKind) }
        guard flags & ~1 == 0 else { throw .unknownFlags(flags) }
        guard UInt64(length) <= UInt64(buffer.readableBytes - Self.headerSize) else { throw .truncatedBody }
        let expected: ClosedRange<UInt32>
        switch kind {
        case .open: expected = 16...UInt32(16 + Self.maximumCallerLength)
        case .accept: expected = 8...8
        case .ping, .pong, .sequence: expected = 16...16
        case .data: expected = 1...UInt32(Self.maximumDataLength)
        case .datagram: expected = 0...UInt32(Self.maximumDatagramLength)
        case .refuse, .credit, .fin, .reset, .datagramClose: expected = 0...0
        }
        guard expected.contains(length) else {
            if kind == .data && length == 0 { throw .zeroLengthData }
            throw .badBodyLength(type: rawKind, length: length)
        }
        // The value field is unused by these frames: it must be zero.
        if value != 0, kind == .data || kind == .fin || kind == .ping || kind == .pong { throw .nonZeroReserved }
        // PING, PONG and SEQUENCE belong to no connection.
        if kind == .ping || kind == .pong || kind == .sequence, id != 0 || flags != 0 { throw .nonZeroReserved }
        // A reply names no service port: only the flow's opener sends one.
        if kind == .datagram, flags & 1 == 0, value != 0 { throw .nonZeroReserved }
        // The sender opened it <=> we did not.
        let key = ConnectionKey(id: id, openedLocally: flags & 1 == 0)
        // Fixed-size bodies are within `fields.body` (their length was checked above).
        let (first, second) = fields.body
        if kind == .data {
            buffer.moveReaderIndex(forwardBy: Self.headerSize)
            return .data(key: key, payload: buffer.readSlice(length: Int(length))!)
        }
        if kind == .datagram {
            buffer.moveReaderIndex(forwardBy: Self.headerSize)
            return .datagram(key: key, servicePort: value, payload: buffer.readSlice(length: Int(length))!)
        }
        if kind == .open {
            let version = UInt16(truncatingIfNeeded: first)
            // Flags: bit 0, records (SEQPACKET); bit 1, a caller block follows the 16
            // bytes (and only then is the body longer); the others are reserved.
            let openFlags = UInt16(truncatingIfNeeded: first >> 16)
            guard openFlags & ~3 == 0 else { throw .nonZeroReserved }
            guard (openFlags & 2 == 2) == (length > 16) else { throw .badBodyLength(type: rawKind, length: length) }
            let credit = UInt32(truncatingIfNeeded: first >> 32)
            // An OPEN must come from the opener; the receiver refuses unknown versions.
            guard flags & 1 == 1 else { throw .unknownFlags(flags) }
            buffer.moveReaderIndex(forwardBy: Self.headerSize + 16)
            let caller = length > 16 ? buffer.readSlice(length: Int(length) - 16)! : nil
            return .open(
                id: id,
                servicePort: value,
                initialCredit: credit,
                instance: second,
                version: version,
                records: openFlags & 1 == 1,
                caller: caller
            )
        }
        buffer.moveReaderIndex(forwardBy: Self.headerSize + Int(length))
        switch kind {
        case .open:
            preconditionFailure("parsed above")
        case .accept:
            return .accept(key: key, initialCredit: value, instance: first)
        case .refuse:
            guard let reason = RefuseReason(rawValue: value) else { throw .unknownReason(value) }
            return .refuse(key: key, reason: reason)
        case .credit:
            return .credit(key: key, increment: value)
        case .fin:
            return .fin(key: key)
        case .reset:
            guard let reason = ResetReason(rawValue: value) else { throw .unknownReason(value) }
            return .reset(key: key, reason: reason)
        case .ping:
            return .ping(instance: first, nonce: second)
        case .pong:
            return .pong(instance: first, nonce: second)
        case .sequence:
            guard second >> 32 == 0 else { throw .nonZeroReserved }
            return .sequence(number: value, base: UInt32(truncatingIfNeeded: second), instance: first)
        case .datagramClose:
            if value == 0 { return .datagramClose(key: key, reason: nil) }
            guard let reason = RefuseReason(rawValue: value) else { throw .unknownReason(value) }
            return .datagramClose(key: key, reason: reason)
        case .data, .datagram:
            preconditionFailure("handled above")
        }
    }
}

/// A frame's header fields and the two little-endian words after it (zero where the
/// bytes end first), read at once.
private struct RawFields {
    var kind: UInt8
    var flags: UInt8
    var reserved: UInt16
    var id: UInt32
    var length: UInt32
    var value: UInt32
    var body: (UInt64, UInt64)

    /// `bytes` holds at least ``StreamFrame/headerSize`` bytes.
    init(_ bytes: UnsafeRawBufferPointer) {
        func load<T: FixedWidthInteger>(_ offset: Int, as: T.Type) -> T {
            T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }
        self.kind = bytes[0]
        self.flags = bytes[1]
        self.reserved = load(2, as: UInt16.self)
        self.id = load(4, as: UInt32.self)
        self.length = load(8, as: UInt32.self)
        self.value = load(12, as: UInt32.self)
        let first: UInt64 = bytes.count >= 24 ? load(16, as: UInt64.self) : 0
        let second: UInt64 = bytes.count >= 32 ? load(24, as: UInt64.self) : 0
        self.body = (first, second)
    }
}
