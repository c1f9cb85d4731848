// SPDX-License-Identifier: Apache-2.0
import FuzzSupport
import HMXGateway
import HMXStream
import NIOCore

/// Fuzzes the HMX stream frame parser with arbitrary message bodies (what a hostile
/// peer gateway can put in an Argo message): it must never crash or over-read, and
/// every frame it accepts must re-encode to exactly the bytes it came from. Its
/// SEQUENCE frames go through ``MessageOrder``, which must never hold a window's worth;
/// an OPEN's caller block goes through ``CallerIdentity/decode(_:)`` as an exporting
/// gateway reads it, and what it accepts must encode to a block it accepts again.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStreamFrame(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    var buffer = ByteBuffer(bytes: input)
    var frames = 0
    // SEQUENCE frames also drive the receiver's reordering, as a hostile peer could.
    var order = MessageOrder()
    while frames < 65536 {
        let start = buffer.readerIndex
        let frame: StreamFrame?
        do {
            frame = try StreamFrame.parse(&buffer)
        } catch {
            break
        }
        guard let frame else { break }
        let consumed = buffer.readerIndex - start
        precondition(consumed == frame.encodedLength)
        var encoded = ByteBuffer()
        frame.encode(into: &encoded)
        precondition(encoded.readableBytes == consumed)
        // The flag byte is turned around by parsing; compare the rest.
        let original = Array(input[start..<(start + consumed)])
        let again = Array(encoded.readableBytesView)
        precondition(original[0] == again[0] && original[2...] == again[2...])
        if case .open(_, _, _, _, _, _, let caller?) = frame, let identity = try? CallerIdentity.decode(caller) {
            var block = ByteBuffer()
            identity.encode(into: &block)
            precondition((try? CallerIdentity.decode(block)) == identity, "a decoded caller does not round-trip")
        }
        if case .sequence(let number, let base, let instance) = frame {
            do {
                _ = try order.receive(number: number, base: base, instance: instance, message: ByteBuffer())
            } catch {
                order.reset()
            }
            precondition(order.heldCount < Int(MessageOrder.window))
        }
        frames += 1
    }
    return 0
}

@_cdecl("FuzzStreamFrame_main")
func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzStreamFrame)
}
