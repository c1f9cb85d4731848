// SPDX-License-Identifier: Apache-2.0
import NIOCore

/// A local socket address a mapping listens on or connects to:
/// `tcp://HOST:PORT`, `tcp://[IPV6]:PORT`, `unix:/PATH` or `vsock://CID:PORT`.
public enum Endpoint: Hashable, Sendable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)
    case vsock(cid: UInt32, port: UInt32)

    /// Why an endpoint is malformed.
    public struct Malformed: Error, Equatable {
        public var reason: String
    }

    /// Parses an endpoint, or says why it is malformed.
    public static func parse(_ text: String) -> Result<Endpoint, Malformed> {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst("unix:".count))
            guard !path.isEmpty, path.utf8.count < 108 else {
                return .failure(Malformed(reason: "unix:PATH needs a path shorter than 108 bytes"))
            }
            return .success(.unix(path: path))
        }
        if text.hasPrefix("tcp://") {
            let rest = text.dropFirst("tcp://".count)
            let host: Substring
            let portText: Substring
            if rest.hasPrefix("[") {
                guard let close = rest.firstIndex(of: "]"), rest[rest.index(after: close)...].hasPrefix(":") else {
                    return .failure(Malformed(reason: "expected tcp://[IPV6]:PORT"))
                }
                host = rest[rest.index(after: rest.startIndex)..<close]
                portText = rest[rest.index(close, offsetBy: 2)...]
            } else {
                guard let colon = rest.lastIndex(of: ":") else {
                    return .failure(Malformed(reason: "expected tcp://HOST:PORT"))
                }
                host = rest[..<colon]
                portText = rest[rest.index(after: colon)...]
            }
            guard !host.isEmpty else { return .failure(Malformed(reason: "missing host in \(text)")) }
            guard let port = Int(portText), (0...65535).contains(port) else {
                return .failure(Malformed(reason: "bad port '\(portText)' in \(text)"))
            }
            return .success(.tcp(host: String(host), port: port))
        }
        if text.hasPrefix("vsock://") {
            let parts = text.dropFirst("vsock://".count).split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let cid = UInt32(parts[0]), let port = UInt32(parts[1]) else {
                return .failure(Malformed(reason: "expected vsock://CID:PORT"))
            }
            return .success(.vsock(cid: cid, port: port))
        }
        return .failure(Malformed(reason: "expected tcp://HOST:PORT, unix:/PATH or vsock://CID:PORT"))
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        case .vsock(let cid, let port): "vsock://\(cid):\(port)"
        }
    }
}
