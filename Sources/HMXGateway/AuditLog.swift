// SPDX-License-Identifier: Apache-2.0
import HMXControl
import HMXCore
import HMXStream
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The audit records: one JSON line per connection decision and per connection end,
/// written with one `write` each to standard error or to a file opened for appending
/// (reopened on every reload, so log rotation only needs a SIGHUP). Records never carry
/// payload bytes.
final class AuditLog {
    let destination: GatewayConfig.AuditDestination
    private let descriptor: CInt

    struct OpenFailed: Error, CustomStringConvertible {
        var path: String
        var reason: String
        var description: String { "cannot open the audit file \(self.path): \(self.reason)" }
    }

    init(_ destination: GatewayConfig.AuditDestination) throws {
        self.destination = destination
        switch destination {
        case .standardError:
            self.descriptor = 2
        case .file(let path):
            let descriptor = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard descriptor >= 0 else { throw OpenFailed(path: path, reason: String(cString: strerror(errno))) }
            self.descriptor = descriptor
        }
    }

    deinit {
        if self.descriptor > 2 { close(self.descriptor) }
    }

    /// What a record says about a connection.
    struct Record {
        var event: String
        var mapping: String
        /// `import` (a local client opened it) or `export` (a peer did).
        var direction: String
        var peer: DomainID
        var peerName: String
        var servicePort: UInt32?
        var outcome: String
        var reason: String? = nil
        var bytesToPeer: Int? = nil
        var bytesFromPeer: Int? = nil
        var durationMilliseconds: Int64? = nil
    }

    func write(_ record: Record) {
        var fields: [(String, String)] = [
            ("time", JSON.string(Self.now())),
            ("event", JSON.string(record.event)),
            ("mapping", JSON.string(record.mapping)),
            ("direction", JSON.string(record.direction)),
            ("peer_domain", "\(record.peer.rawValue)"),
            ("peer_name", JSON.string(record.peerName)),
        ]
        if let port = record.servicePort { fields.append(("service_port", "\(port)")) }
        fields.append(("outcome", JSON.string(record.outcome)))
        if let reason = record.reason { fields.append(("reason", JSON.string(reason))) }
        if let bytes = record.bytesToPeer { fields.append(("bytes_to_peer", "\(bytes)")) }
        if let bytes = record.bytesFromPeer { fields.append(("bytes_from_peer", "\(bytes)")) }
        if let duration = record.durationMilliseconds { fields.append(("duration_ms", "\(duration)")) }
        var line = JSON.object(fields) + "\n"
        line.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(self.descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { return }
                offset += written
            }
        }
    }

    /// UTC time with milliseconds, RFC 3339.
    static func now() -> String {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var parts = tm()
        var seconds = time.tv_sec
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let milliseconds = Int(time.tv_nsec / 1_000_000)
        let millis =
            milliseconds < 10 ? "00\(milliseconds)" : milliseconds < 100 ? "0\(milliseconds)" : "\(milliseconds)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T"
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(millis)Z"
    }
}

@available(*, unavailable)
extension AuditLog: Sendable {}

extension Gateway {
    /// An audit record for a connection the gateway keeps: `opened`, or `ended` (its
    /// outcome `opened` when it ended cleanly, with the bytes its socket carried).
    func auditConnection(_ id: ConnectionID, event: String) {
        guard let audit = self.audit, let connection = self.connections[id] else { return }
        let isEnd = event == "ended"
        audit.write(
            AuditLog.Record(
                event: event,
                mapping: String(connection.mapping.split(separator: ":", maxSplits: 1).last ?? ""),
                direction: id.key.openedLocally ? "import" : "export",
                peer: id.peer,
                peerName: self.config.peerName(of: id.peer) ?? "",
                servicePort: connection.servicePort,
                outcome: isEnd ? connection.end?.outcome.rawValue ?? "closed" : ConnectionOutcome.opened.rawValue,
                reason: connection.end.map(Self.auditReason),
                bytesToPeer: isEnd ? connection.handler?.bytesRead ?? 0 : nil,
                bytesFromPeer: isEnd ? connection.handler?.bytesWritten ?? 0 : nil,
                durationMilliseconds: isEnd
                    ? Int64((self.driver.now.uptimeNanoseconds - connection.start.uptimeNanoseconds) / 1_000_000) : nil
            )
        )
    }

    /// Why a connection ended, in words.
    static func auditReason(_ end: ConnectionEnd) -> String {
        switch end {
        case .refusedByPeer(let reason), .refusedHere(let reason): "\(reason)"
        case .resetByPeer(let reason): "reset by the peer: \(reason)"
        case .violation(let violation): "protocol violation: \(violation)"
        case .localReset: "reset by the local socket"
        case .openTimedOut: "no answer to the OPEN in time"
        case .terminated(let outcome): outcome.rawValue
        }
    }

    /// Opens the audit destination of the configuration again (a rotated file is
    /// recreated); on failure the previous one stays.
    func reopenAudit() {
        guard let destination = self.config.audit else {
            self.audit = nil
            return
        }
        do {
            self.audit = try AuditLog(destination)
        } catch {
            self.logger.error("audit: keeping the previous destination", metadata: ["error": "\(error)"])
        }
    }
}
