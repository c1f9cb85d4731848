// SPDX-License-Identifier: Apache-2.0

/// The wire protocol between a domain process and the emulator ("the hypercall bus").
///
/// A domain process attaches over a Unix stream socket with a ``Hello`` that carries its
/// memory (a sealed memfd, as SCM_RIGHTS); the emulator answers with a ``Welcome``.
/// After that, frames flow both ways. Each frame is
///
/// ```
///  0       4       6       8
///  +-------+-------+-------+---------------------+
///  | length| kind  | flags | body (length - 8)   |   all little-endian
///  +-------+-------+-------+---------------------+
/// ```
///
/// - `hypercall` (domain → emulator, 48 bytes): tag u32, command u32, arg1..arg4 u64.
///   Pointers in the arguments are guest addresses in the domain's memory, exactly as
///   a guest passes them to Xen. Flags bit 0 (version 2), *deferrable*: the caller does
///   not wait for this result, so the emulator may hold a success back (not a
///   failure) until the next result that is not held, the domain's next event, or
///   ``deferredResultDelay``, whichever comes first; that saves the domain a wake-up
///   per message. Every other flag bit, and the flags of every other kind, are 0.
/// - `result` (emulator → domain, 24 bytes): tag u32, zero u32, value i64.
///   Results come back in request order.
/// - `event` (emulator → domain, 8 bytes): VIRQ_ARGO was raised. Raises during one
///   burst of the emulator's work are coalesced into one frame. `eventAck` (8 bytes,
///   domain → emulator) is accepted and ignored (version 1 clients sent it).
///
/// Every frame kind has one fixed length; anything else is a protocol violation and
/// the connection is dropped.
public enum LinkWire {
    public static let magic: UInt32 = 0x4C58_4D48  // "HMXL"
    /// Version 2 added the deferrable flag; the emulator accepts versions 1 and 2.
    public static let version: UInt16 = 2
    public static let supportedVersions: ClosedRange<UInt16> = 1...2
    /// How long the emulator may hold back the result of a deferrable hypercall.
    public static let deferredResultDelay: Duration = .milliseconds(20)
    /// Frame flag of a `hypercall` whose success may be reported late.
    public static let deferrableFlag: UInt16 = 1
    public static let frameHeaderSize = 8

    public enum Kind: UInt16, Sendable {
        case hypercall = 1
        case eventAck = 2
        case result = 0x81
        case event = 0x82

        /// The only valid total length of a frame of this kind.
        public var frameLength: Int {
            switch self {
            case .hypercall: 48
            case .eventAck: 8
            case .result: 24
            case .event: 8
            }
        }
    }

    public enum Frame: Equatable, Sendable {
        case hypercall(
            tag: UInt32,
            command: UInt32,
            arg1: UInt64,
            arg2: UInt64,
            arg3: UInt64,
            arg4: UInt64,
            deferrable: Bool = false
        )
        case eventAck
        case result(tag: UInt32, value: Int64)
        case event

        public var kind: Kind {
            switch self {
            case .hypercall: .hypercall
            case .eventAck: .eventAck
            case .result: .result
            case .event: .event
            }
        }
    }

    public enum ParseError: Error, Equatable {
        case unknownKind(UInt16)
        case badLength(kind: UInt16, length: UInt32)
        case nonZeroReserved
    }

    public enum ParseResult: Equatable {
        /// Not enough bytes yet.
        case needMore
        /// A frame and the number of bytes it used.
        case frame(Frame, consumed: Int)
    }

    /// Parses one frame from the front of `bytes`. Never reads past `bytes`, never
    /// allocates, and rejects every length that is not the fixed one of its kind.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(ParseError) -> ParseResult {
        guard bytes.count >= Self.frameHeaderSize, let base = bytes.baseAddress else { return .needMore }
        let length = loadLE(base, 0, as: UInt32.self)
        let rawKind = loadLE(base, 4, as: UInt16.self)
        guard let kind = Kind(rawValue: rawKind) else { throw .unknownKind(rawKind) }
        guard length == UInt32(kind.frameLength) else { throw .badLength(kind: rawKind, length: length) }
        let flags = loadLE(base, 6, as: UInt16.self)
        let knownFlags = kind == .hypercall ? Self.deferrableFlag : 0
        guard flags & ~knownFlags == 0 else { throw .nonZeroReserved }
        guard bytes.count >= kind.frameLength else { return .needMore }
        let frame: Frame
        switch kind {
        case .hypercall:
            frame = .hypercall(
                tag: loadLE(base, 8, as: UInt32.self),
                command: loadLE(base, 12, as: UInt32.self),
                arg1: loadLE(base, 16, as: UInt64.self),
                arg2: loadLE(base, 24, as: UInt64.self),
                arg3: loadLE(base, 32, as: UInt64.self),
                arg4: loadLE(base, 40, as: UInt64.self),
                deferrable: flags & Self.deferrableFlag != 0
            )
        case .eventAck:
            frame = .eventAck
        case .result:
            guard loadLE(base, 12, as: UInt32.self) == 0 else { throw .nonZeroReserved }
            frame = .result(
                tag: loadLE(base, 8, as: UInt32.self),
                value: Int64(bitPattern: loadLE(base, 16, as: UInt64.self))
            )
        case .event:
            frame = .event
        }
        return .frame(frame, consumed: kind.frameLength)
    }

    /// Encodes a frame into `buffer`, which must hold at least `frame.kind.frameLength` bytes.
    /// - Returns: the number of bytes written.
    @discardableResult
    public static func encode(_ frame: Frame, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let kind = frame.kind
        precondition(buffer.count >= kind.frameLength)
        let base = buffer.baseAddress!
        storeLE(base, 0, UInt32(kind.frameLength))
        storeLE(base, 4, kind.rawValue)
        storeLE(base, 6, UInt16(0))
        switch frame {
        case .hypercall(let tag, let command, let arg1, let arg2, let arg3, let arg4, let deferrable):
            if deferrable { storeLE(base, 6, Self.deferrableFlag) }
            storeLE(base, 8, tag)
            storeLE(base, 12, command)
            storeLE(base, 16, arg1)
            storeLE(base, 24, arg2)
            storeLE(base, 32, arg3)
            storeLE(base, 40, arg4)
        case .result(let tag, let value):
            storeLE(base, 8, tag)
            storeLE(base, 12, UInt32(0))
            storeLE(base, 16, UInt64(bitPattern: value))
        case .eventAck, .event:
            break
        }
        return kind.frameLength
    }

    /// The attach request: sent once, with the domain memory's descriptor attached.
    public struct Hello: Equatable, Sendable {
        public static let size = 16
        public var version: UInt16
        public var memorySize: UInt64

        public init(version: UInt16 = LinkWire.version, memorySize: UInt64) {
            self.version = version
            self.memorySize = memorySize
        }

        public func encoded() -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: Self.size)
            bytes.withUnsafeMutableBytes { raw in
                let base = raw.baseAddress!
                storeLE(base, 0, LinkWire.magic)
                storeLE(base, 4, self.version)
                storeLE(base, 8, self.memorySize)
            }
            return bytes
        }

        /// Parses a hello; `nil` unless it is exactly well-formed.
        public init?(parsing bytes: UnsafeRawBufferPointer) {
            guard bytes.count == Self.size, let base = bytes.baseAddress,
                loadLE(base, 0, as: UInt32.self) == LinkWire.magic,
                loadLE(base, 6, as: UInt16.self) == 0
            else { return nil }
            self.version = loadLE(base, 4, as: UInt16.self)
            self.memorySize = loadLE(base, 8, as: UInt64.self)
        }
    }

    /// The emulator's answer to a hello.
    public struct Welcome: Equatable, Sendable {
        public static let size = 16

        /// Why an attach was refused (0 = accepted).
        public enum Status: UInt16, Sendable, CustomStringConvertible {
            case accepted = 0
            case domainAlreadyAttached = 1
            case credentialsRejected = 2
            case badMemory = 3
            case unsupportedVersion = 4
            case malformedHello = 5

            public var description: String {
                switch self {
                case .accepted: "accepted"
                case .domainAlreadyAttached: "a process is already attached as this domain"
                case .credentialsRejected: "this user may not attach as this domain"
                case .badMemory:
                    "domain memory rejected (must be a sealed memfd of the announced size within the limit)"
                case .unsupportedVersion: "unsupported link protocol version"
                case .malformedHello: "malformed attach request"
                }
            }
        }

        public var status: Status
        public var domain: DomainID

        public init(status: Status, domain: DomainID) {
            self.status = status
            self.domain = domain
        }

        public func encoded() -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: Self.size)
            bytes.withUnsafeMutableBytes { raw in
                let base = raw.baseAddress!
                storeLE(base, 0, LinkWire.magic)
                storeLE(base, 4, LinkWire.version)
                storeLE(base, 6, self.status.rawValue)
                storeLE(base, 8, self.domain.rawValue)
            }
            return bytes
        }

        public init?(parsing bytes: UnsafeRawBufferPointer) {
            guard bytes.count == Self.size, let base = bytes.baseAddress,
                loadLE(base, 0, as: UInt32.self) == LinkWire.magic,
                let status = Status(rawValue: loadLE(base, 6, as: UInt16.self))
            else { return nil }
            self.status = status
            self.domain = DomainID(loadLE(base, 8, as: UInt16.self))
        }
    }
}
