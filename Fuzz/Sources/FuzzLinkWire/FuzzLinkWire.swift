// SPDX-License-Identifier: Apache-2.0
import FuzzSupport
import HMXCore
import NIOCore

/// Fuzzes the emulator link's frame parser and the attach handshake parsers with
/// arbitrary bytes: they must never crash, never read past the input, and every
/// frame they accept must re-encode to the same bytes. The same bytes then go through
/// ``LinkFrameSplitter`` in reads of a size taken from the first byte: it must hand
/// over exactly the frames the parser found, keep less than one frame between reads,
/// and stop at the same malformed frame.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLinkWire(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let all = UnsafeRawBufferPointer(start: data, count: size)
    var input = all
    _ = LinkWire.Hello(parsing: input)
    _ = LinkWire.Welcome(parsing: input)
    var frames = 0
    var parsed: [LinkWire.Frame] = []
    var parseFailed = false
    while frames < 4096 {
        let result: LinkWire.ParseResult
        do {
            result = try LinkWire.parse(input)
        } catch {
            parseFailed = true
            break
        }
        guard case .frame(let frame, let consumed) = result else { break }
        precondition(consumed == frame.kind.frameLength && consumed <= input.count)
        var encoded = [UInt8](repeating: 0, count: consumed)
        encoded.withUnsafeMutableBytes { _ = LinkWire.encode(frame, into: $0) }
        precondition(encoded.elementsEqual(input.prefix(consumed)))
        input = UnsafeRawBufferPointer(rebasing: input.dropFirst(consumed))
        parsed.append(frame)
        frames += 1
    }
    if frames < 4096, let first = all.first {
        let readSize = 1 + Int(first % 64)
        var stream = ByteBuffer(bytes: all)
        var splitter = LinkFrameSplitter()
        var split: [LinkWire.Frame] = []
        var splitFailed = false
        while stream.readableBytes > 0, !splitFailed {
            let read = stream.readSlice(length: min(readSize, stream.readableBytes))!
            do {
                try splitter.split(read) { split.append($0) }
            } catch {
                splitFailed = true
            }
            precondition(splitFailed || splitter.pendingBytes < 48)
        }
        precondition(split == parsed, "the splitter and the parser disagree")
        precondition(splitFailed == parseFailed)
    }
    return 0
}

@_cdecl("FuzzLinkWire_main")
func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzLinkWire)
}
