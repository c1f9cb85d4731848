// SPDX-License-Identifier: Apache-2.0
import HMXStream
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// What one stream is meant to carry: a client (behind an import) sends an 8-byte
/// serial and then `clientBytes`; the server (the export's target) answers with
/// `serverBytes` once it has read the serial. Every byte is a function of the serial,
/// the direction and its offset, so a receiver checks each byte it gets.
struct StreamPlan {
    var serial: UInt64
    var clientBytes: Int
    var serverBytes: Int

    /// The bytes one side sends: for the client the serial, then its payload, a
    /// stretch of ``noise`` that starts where the serial and direction say. A byte
    /// lost, doubled or moved shows, as does one from another stream.
    func bytes(toServer: Bool) -> [UInt8] {
        let count = toServer ? self.clientBytes : self.serverBytes
        let start = Int(truncatingIfNeeded: (self.serial &* 7919 &+ (toServer ? 3571 : 0)) % 65_521)
        let header = toServer ? (0..<8).map { UInt8(truncatingIfNeeded: self.serial >> (8 * UInt64($0))) } : []
        return header + Self.noise[start..<(start + count)]
    }

    /// Pseudo-random bytes, the same in every run.
    static let noise: [UInt8] = {
        var random = SimulationRandom(seed: 0x5EED)
        var bytes = [UInt8](repeating: 0, count: 65_536 + (1 << 20))
        bytes.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for index in words.indices { words[index] = random.next() }
        }
        return bytes
    }()
}

/// One application's socket, as the gateway's driver sees it: bytes to hand over when
/// a read is asked for, writes that complete when the simulation says so, and what
/// the application saw in the end.
final class SimulatedApp: StreamSocket {
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

    /// What this application sends, and what it expects (computed once the plan is known).
    private var outgoing: [UInt8] = []
    private var expected: [UInt8] = []

    /// The plans, for a server that reads a serial.
    private let plans: () -> [UInt64: StreamPlan]

    init(client plan: StreamPlan) {
        self.plans = { [:] }
        self.role = .client
        self.plan = plan
        self.outgoing = plan.bytes(toServer: true)
        self.expected = plan.bytes(toServer: false)
    }

    init(server plans: @escaping () -> [UInt64: StreamPlan]) {
        self.plans = plans
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
        _ = plan
        let buffer = ByteBuffer(bytes: self.outgoing[self.sentCount..<(self.sentCount + count)])
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

    // MARK: - StreamSocket

    func flush() {}

    func read() {
        self.isReadRequested = true
    }

    /// The driver writes bytes from the peer.
    func write(_ bytes: ByteBuffer) {
        guard self.end == nil else { return }
        self.pendingWrites.append(bytes.readableBytes)
        var bytes = bytes
        if self.role == .server, self.plan == nil, !self.isUntracked {
            while self.header.count < 8, let byte = bytes.readInteger(as: UInt8.self) { self.header.append(byte) }
            guard self.header.count == 8 else { return }
            let serial = self.header.enumerated().reduce(UInt64(0)) {
                $0 | UInt64($1.element) << (8 * UInt64($1.offset))
            }
            if let plan = self.plans()[serial] {
                self.plan = plan
                self.outgoing = plan.bytes(toServer: false)
                // The serial is not part of what the server checks.
                self.expected = Array(plan.bytes(toServer: true).dropFirst(8))
            } else {
                self.isUntracked = true
            }
        }
        guard let plan = self.plan, !self.isUntracked else { return }
        let start = self.receivedCount
        let expected = self.expected
        let mismatch: Int? = bytes.withUnsafeReadableBytes { raw in
            guard start + raw.count <= expected.count else { return max(start, expected.count) }
            return expected.withUnsafeBufferPointer { wanted in
                memcmp(raw.baseAddress!, wanted.baseAddress! + start, raw.count) == 0 ? nil : start
            }
        }
        if let mismatch {
            self.violations.append("stream \(plan.serial) \(self.role): wrong or extra bytes from \(mismatch)")
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
            self.violations.append(
                "stream \(self.plan!.serial) \(self.role): EOF after \(self.receivedCount) of \(expected) bytes"
            )
        }
    }

    /// Both directions are done: the application closes its socket.
    func closeIfFinished() -> Bool {
        guard self.end == nil, self.sawEOF, self.isInputClosedReported, self.pendingWrites.isEmpty else { return false }
        self.end = .closed
        return true
    }

    /// The gateway reset the socket.
    func abort() {
        self.reset()
    }

    /// The socket is reset (by the gateway, or the process holding it died).
    func reset() {
        guard self.end == nil else { return }
        self.end = .reset
        self.pendingWrites.removeAll()
    }

    /// The application aborts its connection.
    func abortItself() {
        guard self.end == nil else { return }
        self.end = .aborted
        self.isFaulted = true
        self.pendingWrites.removeAll()
    }
}
