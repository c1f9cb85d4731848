// SPDX-License-Identifier: Apache-2.0
import HMXCore
import HMXStream
import HMXTestSupport
import NIOCore

extension Simulation {
    /// The hostile domain writes a crafted message to beta's wildcard ring: random
    /// bytes, or a valid SEQUENCE followed by frames that open, feed, credit, close
    /// and reset connections it may or may not have, and pings. None of it may touch
    /// the streams between alpha and beta.
    func hostileSend() {
        guard let link = self.hostileLink else { return }
        var buffer = ByteBufferAllocator().buffer(capacity: 512)
        var type = StreamFrame.messageType
        switch self.random.int(0...9) {
        case 0:
            for _ in 0..<self.random.int(1...200) {
                buffer.writeInteger(UInt8.random(in: 0...255, using: &self.random))
            }
        case 1:
            type = UInt32.random(in: 0...UInt32.max, using: &self.random)
            buffer.writeInteger(UInt64(1))
        default:
            let number = UInt32(self.random.int(0...9))
            StreamFrame.sequence(number: number, base: number &- UInt32(self.random.int(0...2)), instance: 0xBAD)
                .encode(into: &buffer)
            for _ in 0..<self.random.int(1...12) { self.hostileFrame().encode(into: &buffer) }
        }
        self.record("mallory sends \(buffer.readableBytes) bytes")
        _ = link.sendv(
            from: Self.port,
            to: HMXAddress(domain: DomainID(2), port: Self.port),
            type: type,
            iovecs: [buffer]
        )
    }

    private func hostileFrame() -> StreamFrame {
        let id = UInt32(self.random.int(0...6))
        let key = StreamFrame.ConnectionKey(id: id, openedLocally: self.random.chance(50))
        switch self.random.int(0...8) {
        case 0, 1:
            let port = self.random.chance(70) ? Self.servicePort : UInt32(self.random.int(0...20))
            return .open(
                id: id,
                servicePort: port,
                initialCredit: UInt32(self.random.int(0...1 << 20)),
                instance: 0xBAD
            )
        case 2:
            var payload = ByteBufferAllocator().buffer(capacity: 64)
            for _ in 0..<self.random.int(1...64) {
                payload.writeInteger(UInt8.random(in: 0...255, using: &self.random))
            }
            return .data(key: key, payload: payload)
        case 3:
            return .credit(key: key, increment: UInt32.random(in: 0...UInt32.max, using: &self.random))
        case 4:
            return .fin(key: key)
        case 5:
            return .reset(key: key, reason: .applicationReset)
        case 6:
            return .accept(key: key, initialCredit: UInt32(self.random.int(0...65_536)), instance: 0xBAD)
        default:
            return .ping(instance: 0xBAD, nonce: UInt64(self.random.int(0...1000)))
        }
    }
}
