// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// A local socket address a mapping listens on or connects to:
/// `tcp://HOST:PORT`, `tcp://[IPV6]:PORT`, `tls://HOST:PORT` (TCP with TLS: the
/// mapping's `tls:` settings say with which certificates), `unix:/PATH` or
/// `vsock://CID:PORT` (streams),
/// `seqpacket:/PATH` (a stream of records: connections whose messages keep their
/// boundaries), `udp://HOST:PORT` or `unixgram:/PATH` (datagrams).
public enum Endpoint: Hashable, Sendable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case tls(host: String, port: Int)
    case unix(path: String)
    case vsock(cid: UInt32, port: UInt32)
    case udp(host: String, port: Int)
    case unixDatagram(path: String)
    case seqpacket(path: String)

    /// A SEQPACKET endpoint: its stream carries records (each after its length).
    public var isRecords: Bool {
        if case .seqpacket = self { return true }
        return false
    }

    /// A datagram endpoint (a datagram mapping): `udp://` or `unixgram:`.
    public var isDatagram: Bool {
        switch self {
        case .udp, .unixDatagram: true
        case .tcp, .tls, .unix, .vsock, .seqpacket: false
        }
    }

    /// A `tls://` endpoint.
    public var isTLS: Bool {
        if case .tls = self { return true }
        return false
    }

    /// Why an endpoint is malformed.
    public struct Malformed: Error, Equatable {
        public var reason: String
    }

    /// Parses an endpoint, or says why it is malformed.
    public static func parse(_ text: String) -> Result<Endpoint, Malformed> {
        let unixSchemes: [(String, (String) -> Endpoint)] = [
            ("unix:", { .unix(path: $0) }), ("unixgram:", { .unixDatagram(path: $0) }),
            ("seqpacket:", { .seqpacket(path: $0) }),
        ]
        for (scheme, make) in unixSchemes where text.hasPrefix(scheme) {
            let path = String(text.dropFirst(scheme.count))
            guard !path.isEmpty, path.utf8.count < 108 else {
                return .failure(Malformed(reason: "\(scheme)PATH needs a path shorter than 108 bytes"))
            }
            return .success(make(path))
        }
        if text.hasPrefix("udp://") {
            return self.parseHostPort(text, scheme: "udp").map { .udp(host: $0.host, port: $0.port) }
        }
        if text.hasPrefix("tcp://") {
            return self.parseHostPort(text, scheme: "tcp").map { .tcp(host: $0.host, port: $0.port) }
        }
        if text.hasPrefix("tls://") {
            return self.parseHostPort(text, scheme: "tls").map { .tls(host: $0.host, port: $0.port) }
        }
        if text.hasPrefix("vsock://") {
            let parts = text.dropFirst("vsock://".count).split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let cid = UInt32(parts[0]), let port = UInt32(parts[1]) else {
                return .failure(Malformed(reason: "expected vsock://CID:PORT"))
            }
            return .success(.vsock(cid: cid, port: port))
        }
        return .failure(
            Malformed(
                reason:
                    "expected tcp://HOST:PORT, tls://HOST:PORT, unix:/PATH, vsock://CID:PORT, seqpacket:/PATH, udp://HOST:PORT or unixgram:/PATH"
            )
        )
    }

    /// `SCHEME://HOST:PORT` or `SCHEME://[IPV6]:PORT`.
    private static func parseHostPort(_ text: String, scheme: String) -> Result<(host: String, port: Int), Malformed> {
        let rest = text.dropFirst(scheme.count + 3)
        let host: Substring
        let portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]"), rest[rest.index(after: close)...].hasPrefix(":") else {
                return .failure(Malformed(reason: "expected \(scheme)://[IPV6]:PORT"))
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            portText = rest[rest.index(close, offsetBy: 2)...]
        } else {
            guard let colon = rest.lastIndex(of: ":") else {
                return .failure(Malformed(reason: "expected \(scheme)://HOST:PORT"))
            }
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        }
        guard !host.isEmpty else { return .failure(Malformed(reason: "missing host in \(text)")) }
        guard let port = Int(portText), (0...65535).contains(port) else {
            return .failure(Malformed(reason: "bad port '\(portText)' in \(text)"))
        }
        return .success((String(host), port))
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        case .tls(let host, let port): host.contains(":") ? "tls://[\(host)]:\(port)" : "tls://\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        case .vsock(let cid, let port): "vsock://\(cid):\(port)"
        case .udp(let host, let port): host.contains(":") ? "udp://[\(host)]:\(port)" : "udp://\(host):\(port)"
        case .unixDatagram(let path): "unixgram:\(path)"
        case .seqpacket(let path): "seqpacket:\(path)"
        }
    }
}
