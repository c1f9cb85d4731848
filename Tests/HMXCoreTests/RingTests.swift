// SPDX-License-Identifier: Apache-2.0
import HMXCore
import Testing

/// Page-aligned memory for ring tests, with guard bytes around it.
final class TestMemory {
    static let guardSize = 4096
    static let guardByte: UInt8 = 0xA5
    let raw: UnsafeMutableRawPointer
    let size: Int

    init(pages: Int) {
        self.size = pages * ArgoABI.pageSize
        self.raw = UnsafeMutableRawPointer.allocate(byteCount: self.size + 2 * Self.guardSize, alignment: 4096)
        self.raw.initializeMemory(as: UInt8.self, repeating: Self.guardByte, count: Self.guardSize)
        (self.raw + Self.guardSize).initializeMemory(as: UInt8.self, repeating: 0, count: self.size)
        (self.raw + Self.guardSize + self.size).initializeMemory(
            as: UInt8.self,
            repeating: Self.guardByte,
            count: Self.guardSize
        )
    }

    deinit { self.raw.deallocate() }

    var base: UnsafeMutableRawPointer { self.raw + Self.guardSize }

    func page(_ index: Int) -> UnsafeMutableRawPointer { self.base + index * ArgoABI.pageSize }

    var guardsIntact: Bool {
        let before = UnsafeRawBufferPointer(start: self.raw, count: Self.guardSize)
        let after = UnsafeRawBufferPointer(start: self.raw + Self.guardSize + self.size, count: Self.guardSize)
        return before.allSatisfy { $0 == Self.guardByte } && after.allSatisfy { $0 == Self.guardByte }
    }

    func setPointers(rx: UInt32, tx: UInt32) {
        self.base.storeBytes(of: rx.littleEndian, toByteOffset: 0, as: UInt32.self)
        self.base.storeBytes(of: tx.littleEndian, toByteOffset: 4, as: UInt32.self)
    }

    var tx: UInt32 { UInt32(littleEndian: self.base.load(fromByteOffset: 4, as: UInt32.self)) }
    var rx: UInt32 { UInt32(littleEndian: self.base.load(fromByteOffset: 0, as: UInt32.self)) }
}

struct Rng {
    var state: UInt64
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Inserts one message; nil on success, else why not.
func insert(
    _ writer: inout RingWriter,
    _ payload: [UInt8],
    source: ArgoAddr = ArgoAddr(port: 9, domain: 3),
    type: UInt32 = 7
)
    -> RingWriter.InsertError?
{
    let result = payload.withUnsafeBytes { bytes in
        [RingWriter.Piece(pointer: bytes.baseAddress, length: UInt32(bytes.count))].withUnsafeBufferPointer { pieces in
            writer.insert(source: source, messageType: type, payloadLength: UInt32(bytes.count), pieces: pieces)
        }
    }
    switch result {
    case .success: return nil
    case .failure(let error): return error
    }
}

func pattern(_ count: Int, seed: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ seed) }
}

@Suite("Argo ring writer and reader")
struct RingTests {
    @Test("wrap-around at every slot offset, for payloads of every shape")
    func wrapAroundAtEveryOffset() throws {
        let length: UInt32 = 256
        for start in stride(from: UInt32(0), to: length, by: 16) {
            for size in [0, 1, 15, 16, 17, 100, 200, 223, 224] {
                let memory = TestMemory(pages: 1)
                memory.setPointers(rx: start, tx: start)
                var writer = RingWriter(pages: [memory.page(0)], length: length)
                #expect(writer.txPointer == start)
                var reader = RingReader(base: memory.base, length: length)
                let payload = pattern(size, seed: Int(start))
                #expect(insert(&writer, payload) == nil)
                let message = try #require(try reader.peek(), "start \(start) size \(size)")
                #expect(message.payloadBytes() == payload, "start \(start) size \(size)")
                #expect(message.header.length == UInt32(size) + 16)
                #expect(message.source == HMXAddress(domain: DomainID(3), port: 9))
                #expect(message.header.messageType == 7)
                reader.consume(message)
                #expect(reader.rxPointer == writer.txPointer, "start \(start) size \(size)")
                #expect(memory.rx == memory.tx)
                #expect(reader.isEmpty)
                #expect(memory.guardsIntact)
            }
        }
    }

    @Test("free space keeps one slot: full is never mistaken for empty")
    func freeSpaceRule() throws {
        let memory = TestMemory(pages: 1)
        var writer = RingWriter(pages: [memory.page(0)], length: 256)
        var reader = RingReader(base: memory.base, length: 256)
        #expect(writer.payloadSpace == 224)
        #expect(writer.maximumMessageSize == 224)
        #expect(insert(&writer, pattern(225, seed: 1)) == .messageTooLarge)
        #expect(insert(&writer, pattern(224, seed: 1)) == nil)
        #expect(writer.payloadSpace == 0)
        #expect(insert(&writer, []) == .noSpace)
        let first = try #require(try reader.peek())
        reader.consume(first)
        #expect(writer.payloadSpace == 224)
        // 100 bytes take 112 + 16 = 128 bytes; 256 - 128 = 128 remain, minus header and slot.
        #expect(insert(&writer, pattern(100, seed: 2)) == nil)
        #expect(writer.payloadSpace == 96)
        #expect(insert(&writer, pattern(97, seed: 3)) == .noSpace)
        #expect(insert(&writer, pattern(96, seed: 3)) == nil)
        #expect(insert(&writer, []) == .noSpace)
    }

    @Test("a message spread over frames that are not contiguous")
    func noncontiguousFrames() throws {
        let length = ArgoABI.ringLength(fillingPages: 3)
        let frames = (0..<3).map { _ in TestMemory(pages: 1) }
        // Frames in a scrambled order in memory.
        var writer = RingWriter(pages: [frames[2].base, frames[0].base, frames[1].base], length: length)
        let contiguous = TestMemory(pages: 3)
        var reader = RingReader(base: contiguous.base, length: length)
        for round in 0..<40 {
            let payload = pattern(1000 + round * 37, seed: round)
            #expect(insert(&writer, payload) == nil)
            // Gather the frames as the guest would see them mapped contiguously.
            for (index, frame) in [frames[2], frames[0], frames[1]].enumerated() {
                contiguous.page(index).copyMemory(from: frame.base, byteCount: ArgoABI.pageSize)
            }
            contiguous.base.storeBytes(of: reader.rxPointer.littleEndian, toByteOffset: 0, as: UInt32.self)
            let message = try #require(try reader.peek())
            #expect(message.payloadBytes() == payload, "round \(round)")
            reader.consume(message)
            frames[2].base.storeBytes(of: reader.rxPointer.littleEndian, toByteOffset: 0, as: UInt32.self)
        }
        #expect(frames.allSatisfy { $0.guardsIntact })
    }

    @Test("registration keeps a sane tx_ptr and flushes a corrupt one")
    func registrationFlushesCorruptTx() {
        let memory = TestMemory(pages: 1)
        memory.setPointers(rx: 48, tx: 32)
        #expect(RingWriter(pages: [memory.page(0)], length: 256).txPointer == 32)
        memory.setPointers(rx: 40, tx: 33)
        let unaligned = RingWriter(pages: [memory.page(0)], length: 256)
        #expect(unaligned.txPointer == 48)
        #expect(memory.tx == 48)
        memory.setPointers(rx: 250, tx: 4096)
        #expect(RingWriter(pages: [memory.page(0)], length: 256).txPointer == 0)
    }

    @Test("a hostile receiver's rx_ptr never makes the writer leave the ring")
    func hostileRxPointer() {
        var rng = Rng(state: 7)
        let memory = TestMemory(pages: 2)
        let length = ArgoABI.ringLength(fillingPages: 2)
        var writer = RingWriter(pages: [memory.page(0), memory.page(1)], length: length)
        for _ in 0..<4_000 {
            let rx = UInt32(truncatingIfNeeded: rng.next())
            memory.base.storeBytes(of: (rng.next() % 4 == 0 ? rx : rx % length), toByteOffset: 0, as: UInt32.self)
            _ = insert(&writer, pattern(Int(rng.next() % UInt64(length)), seed: 1))
            #expect(writer.txPointer < length && writer.txPointer % 16 == 0)
        }
        #expect(memory.guardsIntact)
    }

    @Test("corrupt ring contents are reported, never read beyond the ring")
    func corruptRing() throws {
        let memory = TestMemory(pages: 1)
        var reader = RingReader(base: memory.base, length: 256)
        memory.setPointers(rx: 0, tx: 512)
        #expect(throws: RingReader.Corruption.txPointerOutOfRange(512)) { try reader.peek() }
        memory.setPointers(rx: 0, tx: 40)
        #expect(throws: RingReader.Corruption.txPointerUnaligned(40)) { try reader.peek() }
        // A header claiming a length smaller than itself.
        memory.setPointers(rx: 0, tx: 32)
        ArgoMessageHeader(length: 8, source: ArgoAddr(port: 0, domain: 0), messageType: 0).store(to: memory.base + 64)
        #expect(throws: RingReader.Corruption.headerLengthTooSmall(8)) { try reader.peek() }
        // A header claiming more bytes than tx_ptr says exist.
        ArgoMessageHeader(length: 100, source: ArgoAddr(port: 0, domain: 0), messageType: 0).store(to: memory.base + 64)
        #expect(throws: RingReader.Corruption.headerLengthBeyondData(length: 100, available: 32)) { try reader.peek() }
        reader.flush()
        #expect(reader.isEmpty)
        #expect(memory.rx == 32)
    }

    @Test("random ring contents: the reader never crashes and stays inside the ring")
    func randomGarbage() {
        var rng = Rng(state: 99)
        let memory = TestMemory(pages: 1)
        let length: UInt32 = 4032
        let data = UnsafeRawBufferPointer(start: memory.base + 64, count: Int(length))
        for _ in 0..<20_000 {
            for offset in stride(from: 0, to: Int(length), by: 8) {
                (memory.base + 64 + offset).storeBytes(of: rng.next(), as: UInt64.self)
            }
            let tx =
                rng.next() % 3 == 0 ? UInt32(truncatingIfNeeded: rng.next()) : UInt32(rng.next() % UInt64(length)) & ~15
            memory.setPointers(rx: 0, tx: tx)
            var reader = RingReader(base: memory.base, length: length)
            if let message = try? reader.peek() {
                let pieces = [message.first, message.second]
                for piece in pieces where piece.count > 0 {
                    #expect(
                        piece.baseAddress! >= data.baseAddress!
                            && piece.baseAddress! + piece.count <= data.baseAddress! + data.count
                    )
                }
                #expect(message.payloadLength + 16 == Int(message.header.length))
                reader.consume(message)
                #expect(reader.rxPointer < length && reader.rxPointer % 16 == 0)
            }
        }
        #expect(memory.guardsIntact)
    }
}
