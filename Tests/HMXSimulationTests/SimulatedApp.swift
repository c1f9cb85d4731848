// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// What one stream is meant to carry: a client (behind an import) sends an 8-byte
/// serial and then `clientBytes`; the server (the export's target) answers with
/// `serverBytes` once it has read the serial. Every byte is a function of the serial,
/// the direction and its offset, so a receiver checks each byte it gets.
struct StreamPlan {
    var serial: UInt64
    var clientBytes: Int
    var serverBytes: Int

    static func byte(serial: UInt64, toServer: Bool, offset: Int) -> UInt8 {
        // Changes with every offset (a byte lost, doubled or moved shows), and differs
        // per stream and direction.
        let value = UInt32(truncatingIfNeeded: offset) &* 2_654_435_761 ^ UInt32(truncatingIfNeeded: serial) &* 40_503
        return UInt8(truncatingIfNeeded: (value >> 13) ^ value) ^ (toServer ? 0x5A : 0)
    }
}

/// One application's socket, as the gateway's driver sees it: bytes to hand over when
/// a read is asked for, writes that complete when the simulation says so, and what
/// the application saw in the end.
final class SimulatedApp {
    enum Role { case client, server }

    enum End: Equatable {
        /// Both directions ended cleanly: the application got EOF and closed.
        case closed
        /// The application saw a reset (or its process died).
        case reset
        /// The application aborted the connection itself.
        case aborted
    }

    let role: Role
    /// The stream's plan; a server learns it from the serial it reads.
    private(set) var plan: StreamPlan?
    /// For a server: the first bytes read, until the serial is complete.
    private var header: [UInt8] = []
    /// The server's peer is not one of the simulation's clients (a hostile domain).
    private(set) var isUntracked = false
    /// Bytes handed to the driver.
    private(set) var sentCount = 0
    /// Payload bytes received and checked.
    private(set) var receivedCount = 0
    /// Writes the driver made whose completion has not been reported yet.
    private(set) var pendingWrites: [Int] = []
    var isReadRequested = false
    /// The application shut its write side (it wrote everything).
    private(set) var hasShutWrite = false
    /// The driver has been told the input closed (EOF after all bytes).
    private(set) var isInputClosedReported = false
    /// The driver asked to shut our output: EOF once the pending writes are done.
    private(set) var isEOFPending = false
    private(set) var sawEOF = false
    private(set) var end: End?
    /// Faults that touched the stream: a clean end is not owed.
    var isFaulted = false
    private(set) var violations: [String] = []

    init(client plan: StreamPlan) {
        self.role = .client
        self.plan = plan
    }

    init(server: Void) {
        self.role = .server
    }

    /// Bytes this application sends in all.
    var totalToSend: Int {
        guard let plan else { return 0 }
        return self.role == .client ? 8 + plan.clientBytes : plan.serverBytes
    }

    /// Bytes it expects from the other side.
    var totalToReceive: Int? {
        guard let plan else { return nil }
        return self.role == .client ? plan.serverBytes : plan.clientBytes
    }

    var hasBytesToSend: Bool { self.end == nil && self.sentCount < self.totalToSend }
    var isDone: Bool { self.end != nil }

    /// The application writes all it has into its socket and shuts the write side:
    /// from now on the socket holds all its bytes, then EOF.
    func shutWrite() -> Bool {
        guard self.end == nil, !self.hasShutWrite, self.plan != nil || self.isUntracked else { return false }
        self.hasShutWrite = true
        return true
    }

    /// The next bytes the socket gives the driver, at most `maximum`.
    func read(maximum: Int) -> ByteBuffer? {
        guard self.hasBytesToSend, let plan else { return nil }
        let count = min(maximum, self.totalToSend - self.sentCount)
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        let start = self.sentCount
        let role = self.role
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
            for index in 0..<count {
                let offset = start + index
                if role == .client, offset < 8 {
                    raw[index] = UInt8(truncatingIfNeeded: plan.serial >> (8 * UInt64(offset)))
                } else {
                    let payloadOffset = role == .client ? offset - 8 : offset
                    raw[index] = StreamPlan.byte(serial: plan.serial, toServer: role == .client, offset: payloadOffset)
                }
            }
            return count
        }
        self.sentCount += count
        return buffer
    }

    /// All bytes were read and the input's EOF is reported now.
    func inputClosedReported() -> Bool {
        guard self.hasShutWrite, !self.isInputClosedReported, self.sentCount == self.totalToSend, self.end == nil else {
            return false
        }
        self.isInputClosedReported = true
        return true
    }

    /// The driver writes bytes from the peer.
    func write(_ bytes: ByteBuffer, plans: [UInt64: StreamPlan]) {
        guard self.end == nil else { return }
        self.pendingWrites.append(bytes.readableBytes)
        var bytes = bytes
        if self.role == .server, self.plan == nil, !self.isUntracked {
            while self.header.count < 8, let byte = bytes.readInteger(as: UInt8.self) { self.header.append(byte) }
            guard self.header.count == 8 else { return }
            let serial = self.header.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            if let plan = plans[serial] {
                self.plan = plan
            } else {
                self.isUntracked = true
            }
        }
        guard let plan = self.plan, !self.isUntracked else { return }
        let toServer = self.role == .server
        let expectedTotal = self.totalToReceive!
        let start = self.receivedCount
        let mismatch: Int? = bytes.withUnsafeReadableBytes { raw in
            for index in 0..<raw.count {
                let offset = start + index
                if offset >= expectedTotal || raw[index] != StreamPlan.byte(serial: plan.serial, toServer: toServer, offset: offset) {
                    return offset
                }
            }
            return nil
        }
        if let mismatch {
            self.violations.append("stream \(plan.serial) \(self.role): wrong or extra byte at \(mismatch)")
            return
        }
        self.receivedCount += bytes.readableBytes
    }

    /// The socket took the oldest pending write.
    func completeWrite() -> Int? {
        guard !self.pendingWrites.isEmpty else { return nil }
        let count = self.pendingWrites.removeFirst()
        self.checkEOF()
        return count
    }

    func shutdownOutput() {
        guard self.end == nil else { return }
        self.isEOFPending = true
        self.checkEOF()
    }

    private func checkEOF() {
        guard self.isEOFPending, self.pendingWrites.isEmpty, !self.sawEOF else { return }
        self.sawEOF = true
        if let expected = self.totalToReceive, !self.isUntracked, self.receivedCount != expected {
            self.violations.append("stream \(self.plan!.serial) \(self.role): EOF after \(self.receivedCount) of \(expected) bytes")
        }
    }

    /// Both directions are done: the application closes its socket.
    func closeIfFinished() -> Bool {
        guard self.end == nil, self.sawEOF, self.isInputClosedReported, self.pendingWrites.isEmpty else { return false }
        self.end = .closed
        return true
    }

    /// The gateway reset the socket (or the process holding it died).
    func reset() {
        guard self.end == nil else { return }
        self.end = .reset
        self.pendingWrites.removeAll()
    }

    /// The application aborts its connection.
    func abort() {
        guard self.end == nil else { return }
        self.end = .aborted
        self.isFaulted = true
        self.pendingWrites.removeAll()
    }
}
