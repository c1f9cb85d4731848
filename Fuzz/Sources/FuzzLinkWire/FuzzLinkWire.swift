// SPDX-License-Identifier: Apache-2.0
import FuzzSupport
import HMXCore

/// Fuzzes the emulator link's frame parser and the attach handshake parsers with
/// arbitrary bytes: they must never crash, never read past the input, and every
/// frame they accept must re-encode to the same bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLinkWire(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var input = UnsafeRawBufferPointer(start: data, count: size)
    _ = LinkWire.Hello(parsing: input)
    _ = LinkWire.Welcome(parsing: input)
    var frames = 0
    while frames < 4096 {
        let result: LinkWire.ParseResult
        do {
            result = try LinkWire.parse(input)
        } catch {
            break
        }
        guard case .frame(let frame, let consumed) = result else { break }
        precondition(consumed == frame.kind.frameLength && consumed <= input.count)
        var encoded = [UInt8](repeating: 0, count: consumed)
        encoded.withUnsafeMutableBytes { _ = LinkWire.encode(frame, into: $0) }
        precondition(encoded.elementsEqual(input.prefix(consumed)))
        input = UnsafeRawBufferPointer(rebasing: input.dropFirst(consumed))
        frames += 1
    }
    return 0
}

@_cdecl("FuzzLinkWire_main")
func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzLinkWire)
}
