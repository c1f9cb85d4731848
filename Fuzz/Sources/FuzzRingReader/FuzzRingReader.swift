// SPDX-License-Identifier: Apache-2.0
import FuzzSupport
import HMXCore

/// Fuzzes the guest-side ring reader with arbitrary ring memory: the first 8 bytes
/// choose the ring length and tx_ptr, the rest is the ring's data. The reader must
/// never crash, never hand out bytes outside the ring, and always make progress.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRingReader(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 8 else { return 0 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    let lengthSeed = UInt32(input[0]) | UInt32(input[1]) << 8
    let length = max(ArgoABI.minimumRingLength, (lengthSeed % 8192) & ~15)
    let tx = UInt32(input[4]) | UInt32(input[5]) << 8 | UInt32(input[6]) << 16 | UInt32(input[7]) << 24
    let total = Int(ArgoABI.ringHeaderSize + length)
    let memory = UnsafeMutableRawPointer.allocate(byteCount: total, alignment: 4096)
    defer { memory.deallocate() }
    memory.initializeMemory(as: UInt8.self, repeating: 0, count: total)
    let payload = input.dropFirst(8)
    let count = min(payload.count, Int(length))
    if count > 0 {
        (memory + Int(ArgoABI.ringHeaderSize)).copyMemory(
            from: UnsafeRawBufferPointer(rebasing: payload).baseAddress!,
            byteCount: count
        )
    }
    memory.storeBytes(of: UInt32(0), toByteOffset: 0, as: UInt32.self)
    memory.storeBytes(of: tx, toByteOffset: 4, as: UInt32.self)
    var reader = RingReader(base: memory, length: length)
    let start = memory + Int(ArgoABI.ringHeaderSize)
    let end = start + Int(length)
    var messages = 0
    while messages < 1024 {
        let message: RingReader.Message?
        do {
            message = try reader.peek()
        } catch {
            reader.flush()
            break
        }
        guard let message else { break }
        for piece in [message.first, message.second] where piece.count > 0 {
            precondition(
                piece.baseAddress! >= UnsafeRawPointer(start)
                    && piece.baseAddress! + piece.count <= UnsafeRawPointer(end)
            )
        }
        precondition(message.payloadLength + 16 == Int(message.header.length))
        let before = reader.rxPointer
        reader.consume(message)
        precondition(reader.rxPointer != before || message.header.length == 0)
        messages += 1
    }
    return 0
}

@_cdecl("FuzzRingReader_main")
func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzRingReader)
}
