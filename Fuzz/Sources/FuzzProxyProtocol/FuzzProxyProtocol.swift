// SPDX-License-Identifier: Apache-2.0
import FuzzSupport
import HMXProxyProtocol
import NIOCore

/// Fuzzes the PROXY v2 parser with arbitrary bytes: it must never crash, never hold
/// more than its limit, never consume bytes it did not accept, and every header it
/// accepts must re-encode to exactly the bytes it consumed. A header it accepts must
/// also be "incomplete" (nil), not an error, for every shorter prefix.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProxyProtocol(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    // The last byte picks the limit (16 … 16336), so that small limits are exercised too;
    // it follows the header, so valid headers stay valid inputs.
    let limit = size > 0 ? 16 + Int(input[size - 1]) * 64 : ProxyHeader.defaultMaximumLength
    var buffer = ByteBuffer(bytes: input)
    let header: ProxyHeader?
    do {
        header = try ProxyHeader.parse(from: &buffer, maximumLength: limit)
    } catch {
        precondition(buffer.readableBytes == size, "a rejected header consumed bytes")
        return 0
    }
    guard let header else {
        precondition(buffer.readableBytes == size, "an incomplete header consumed bytes")
        return 0
    }
    let consumed = size - buffer.readableBytes
    precondition(consumed <= limit && consumed == header.encodedLength)
    guard let encoded = try? header.encoded() else { preconditionFailure("an accepted header does not encode") }
    precondition(encoded.readableBytesView.elementsEqual(input.prefix(consumed)), "re-encoding differs")
    for cut in [consumed - 1, 16, 15, 11] where cut >= 0 && cut < consumed {
        var prefix = ByteBuffer(bytes: input.prefix(cut))
        let incomplete: Bool
        do {
            incomplete = try ProxyHeader.parse(from: &prefix, maximumLength: limit) == nil
        } catch {
            incomplete = false
        }
        precondition(incomplete, "a prefix of an accepted header is not incomplete")
    }
    return 0
}

@_cdecl("FuzzProxyProtocol_main")
func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzProxyProtocol)
}
