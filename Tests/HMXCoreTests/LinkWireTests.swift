// SPDX-License-Identifier: Apache-2.0
import HMXCore
import Testing

@Suite("Emulator link wire format")
struct LinkWireTests {
    func encode(_ frame: LinkWire.Frame) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: frame.kind.frameLength)
        bytes.withUnsafeMutableBytes { _ = LinkWire.encode(frame, into: $0) }
        return bytes
    }

    func parse(_ bytes: [UInt8]) throws -> LinkWire.ParseResult {
        try bytes.withUnsafeBytes { raw in try LinkWire.parse(raw) }
    }

    @Test func roundTrip() throws {
        let frames: [LinkWire.Frame] = [
            .hypercall(tag: 1, command: 3, arg1: 0x1000, arg2: 0x2000, arg3: 8, arg4: 0x6447_724D),
            .hypercall(tag: 2, command: 3, arg1: 0x1000, arg2: 0x2000, arg3: 8, arg4: 0x6447_724D, deferrable: true),
            .eventAck,
            .result(tag: 99, value: -111),
            .result(tag: 7, value: 65536),
            .event,
        ]
        for frame in frames {
            let bytes = self.encode(frame)
            #expect(try self.parse(bytes) == .frame(frame, consumed: bytes.count))
            // Every strict prefix needs more bytes.
            for cut in 0..<bytes.count {
                #expect(try self.parse(Array(bytes[0..<cut])) == .needMore)
            }
        }
    }

    @Test func rejectsWhatIsNotExactlyAFrame() throws {
        var bytes = self.encode(.event)
        bytes[4] = 0x55
        #expect(throws: LinkWire.ParseError.unknownKind(0x55)) { try self.parse(bytes) }
        bytes = self.encode(.event)
        bytes[0] = 9
        #expect(throws: LinkWire.ParseError.badLength(kind: 0x82, length: 9)) { try self.parse(bytes) }
        bytes = self.encode(.hypercall(tag: 0, command: 0, arg1: 0, arg2: 0, arg3: 0, arg4: 0))
        bytes[0] = 0xFF
        bytes[3] = 0xFF
        #expect(throws: LinkWire.ParseError.badLength(kind: 1, length: 0xFF00_00FF)) { try self.parse(bytes) }
        bytes = self.encode(.event)
        bytes[6] = 1
        #expect(throws: LinkWire.ParseError.nonZeroReserved) { try self.parse(bytes) }
        // Only hypercalls carry a flag, and only the deferrable one.
        bytes = self.encode(.result(tag: 1, value: 0))
        bytes[6] = 1
        #expect(throws: LinkWire.ParseError.nonZeroReserved) { try self.parse(bytes) }
        bytes = self.encode(.hypercall(tag: 0, command: 0, arg1: 0, arg2: 0, arg3: 0, arg4: 0))
        bytes[6] = 2
        #expect(throws: LinkWire.ParseError.nonZeroReserved) { try self.parse(bytes) }
        bytes[6] = 1
        #expect(
            try self.parse(bytes)
                == .frame(
                    .hypercall(tag: 0, command: 0, arg1: 0, arg2: 0, arg3: 0, arg4: 0, deferrable: true),
                    consumed: 48
                )
        )
    }

    @Test func helloAndWelcome() {
        let hello = LinkWire.Hello(memorySize: 1 << 26)
        #expect(hello.encoded().withUnsafeBytes { LinkWire.Hello(parsing: $0) } == hello)
        var bad = hello.encoded()
        bad[0] ^= 1
        #expect(bad.withUnsafeBytes { LinkWire.Hello(parsing: $0) } == nil)
        #expect(Array(hello.encoded().prefix(15)).withUnsafeBytes { LinkWire.Hello(parsing: $0) } == nil)
        let welcome = LinkWire.Welcome(status: .credentialsRejected, domain: DomainID(4))
        #expect(welcome.encoded().withUnsafeBytes { LinkWire.Welcome(parsing: $0) } == welcome)
    }
}
