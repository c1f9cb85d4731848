// SPDX-License-Identifier: Apache-2.0
import HMXCore
import NIOCore
import Testing

@testable import HMXEmulator

@Suite("Link frame splitter")
struct LinkFrameSplitterTests {
    static let frames: [LinkWire.Frame] = [
        .hypercall(tag: 1, command: 3, arg1: 0x1000, arg2: 0x2000, arg3: 8, arg4: 0x6447_724D),
        .event,
        .result(tag: 1, value: -11),
        .hypercall(tag: 2, command: 4, arg1: 0, arg2: 0, arg3: 0, arg4: 0, deferrable: true),
        .eventAck,
        .result(tag: 2, value: 65536),
    ]

    static var stream: ByteBuffer {
        var buffer = ByteBuffer()
        for _ in 0..<5 { for frame in Self.frames { buffer.writeLinkFrame(frame) } }
        return buffer
    }

    @Test(
        "frames come out whole and in order however the reads cut them",
        arguments: [1, 5, 7, 24, 47, 48, 49, 100, 4096]
    )
    func anyCut(readSize: Int) throws {
        var input = Self.stream
        var splitter = LinkFrameSplitter()
        var out: [LinkWire.Frame] = []
        while input.readableBytes > 0 {
            let read = input.readSlice(length: min(readSize, input.readableBytes))!
            try splitter.split(read) { out.append($0) }
            #expect(splitter.pendingBytes < 48, "more than a partial frame kept")
        }
        #expect(out == Array(repeating: Self.frames, count: 5).flatMap { $0 })
        #expect(splitter.pendingBytes == 0)
    }

    @Test("a malformed frame stops the split: the frames before it were handed over, nothing after it")
    func malformedStops() {
        var input = ByteBuffer()
        input.writeLinkFrame(.event)
        input.writeLinkFrame(.result(tag: 5, value: 0))
        var bad = ByteBuffer()
        bad.writeLinkFrame(.event)
        bad.setInteger(UInt16(0x55), at: bad.readerIndex + 4, endianness: .little)  // unknown kind
        input.writeBuffer(&bad)
        input.writeLinkFrame(.event)
        var splitter = LinkFrameSplitter()
        var out: [LinkWire.Frame] = []
        #expect(throws: LinkWire.ParseError.unknownKind(0x55)) {
            try splitter.split(input) { out.append($0) }
        }
        #expect(out == [.event, .result(tag: 5, value: 0)])
    }

    @Test("an error thrown by the frame handler ends the split at that frame")
    func handlerErrorStops() {
        struct Stop: Error {}
        var splitter = LinkFrameSplitter()
        var seen = 0
        #expect(throws: Stop.self) {
            try splitter.split(Self.stream) { _ in
                seen += 1
                if seen == 3 { throw Stop() }
            }
        }
        #expect(seen == 3)
    }
}
