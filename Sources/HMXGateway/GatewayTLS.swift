// SPDX-License-Identifier: Apache-2.0
import HMXStream
import NIOCore

/// TLS settings of a `tls://` import listener: the gateway is the TLS server.
public struct TLSServerSettings: Sendable, Equatable {
    /// PEM: the server's certificate, then its chain.
    public var certificate: String
    /// PEM: the certificate's private key.
    public var key: String
    /// PEM: CAs a client's certificate must chain to (nil: no client certificate is
    /// asked for).
    public var clientCA: String?
    /// How long a client has to finish the handshake (and to send a PROXY header).
    public var handshakeTimeoutMilliseconds: Int64

    public static let defaultHandshakeTimeoutMilliseconds: Int64 = 10_000

    public init(certificate: String, key: String, clientCA: String?, handshakeTimeoutMilliseconds: Int64) {
        self.certificate = certificate
        self.key = key
        self.clientCA = clientCA
        self.handshakeTimeoutMilliseconds = handshakeTimeoutMilliseconds
    }
}

/// TLS settings of a `tls://` export target: the gateway is the TLS client.
public struct TLSClientSettings: Sendable, Equatable {
    /// Where the CAs trusted for the server's certificate come from.
    public enum Trust: Sendable, Equatable, CustomStringConvertible {
        /// The system's store.
        case system
        /// A PEM file of CAs.
        case file(String)

        public var description: String {
            switch self {
            case .system: "system"
            case .file(let path): path
            }
        }
    }

    public var trust: Trust
    /// The name sent as SNI and required in the server's certificate (nil: the
    /// target's host when it is a name; an address is checked as an address).
    public var serverName: String?
    public var verifyHostname: Bool
    /// PEM: a client certificate and its key (mutual TLS), or nil.
    public var certificate: String?
    public var key: String?

    public init(trust: Trust, serverName: String?, verifyHostname: Bool, certificate: String?, key: String?) {
        self.trust = trust
        self.serverName = serverName
        self.verifyHostname = verifyHostname
        self.certificate = certificate
        self.key = key
    }
}

/// Why a TLS handshake failed, as the gateway counts it (``ConnectionOutcome``).
public enum TLSFailure: Sendable, Equatable {
    /// The peer's certificate does not chain to a trusted CA (or is malformed).
    case untrusted
    /// The peer's certificate (or one of its chain) is expired or not valid yet.
    case expired
    /// The server's certificate does not carry the name asked for.
    case hostnameMismatch
    /// A client sent no certificate where one is required.
    case noClientCertificate
    /// Anything else: no common version or cipher, the peer's alert, a timeout, a
    /// connection closed during the handshake.
    case handshakeFailed

    public var outcome: ConnectionOutcome {
        switch self {
        case .untrusted: .tlsUntrusted
        case .expired: .tlsExpired
        case .hostnameMismatch: .tlsHostnameMismatch
        case .noClientCertificate: .tlsNoClientCertificate
        case .handshakeFailed: .tlsHandshakeFailed
        }
    }
}

/// A failed handshake: the counted failure and what happened, for the log.
public struct TLSHandshakeError: Error, Sendable, CustomStringConvertible {
    public var failure: TLSFailure
    public var detail: String

    public init(_ failure: TLSFailure, _ detail: String) {
        self.failure = failure
        self.detail = detail
    }

    public var description: String { self.detail }
}

/// What the other end of a TLS connection proved: its certificate, verified against
/// the configured CAs (nil fields: no certificate).
public struct TLSPeerIdentity: Sendable, Equatable {
    /// The certificate's subject common name.
    public var commonName: String?
    /// Its DNS subject alternative names.
    public var dnsNames: [String]
    /// The negotiated protocol version, like `TLSv1.3`.
    public var version: String?

    public init(commonName: String?, dnsNames: [String], version: String?) {
        self.commonName = commonName
        self.dnsNames = dnsNames
        self.version = version
    }

    /// True if the certificate carries `name` as its common name or a DNS name.
    public func isNamed(_ name: String) -> Bool {
        self.commonName == name || self.dnsNames.contains(name)
    }

    /// True if a server's certificate is for host `name` (RFC 6125): one of its DNS
    /// names, case-insensitively, where `*.` matches one leftmost label; the common
    /// name only when there are no DNS names.
    public func matches(hostname name: String) -> Bool {
        let host = name.lowercased().hasSuffix(".") ? String(name.lowercased().dropLast()) : name.lowercased()
        let candidates = self.dnsNames.isEmpty ? (self.commonName.map { [$0] } ?? []) : self.dnsNames
        return candidates.contains { candidate in
            let pattern = candidate.lowercased()
            guard pattern.hasPrefix("*.") else { return pattern == host }
            guard let dot = host.firstIndex(of: "."), host[..<dot].count > 0 else { return false }
            return host[dot...] == pattern.dropFirst()
        }
    }
}

/// TLS for `tls://` mappings, given to the gateway by the program that runs it (the
/// HMXTLS module, on swift-nio-ssl). Certificates and keys live here by mapping name:
/// ``load(_:)`` replaces them all at once, and connections made afterwards use the new
/// ones while open connections keep theirs.
public protocol GatewayTLS: AnyObject, Sendable {
    /// Reads every certificate, key and CA file the configuration's `tls://` mappings
    /// name. On error nothing changes; the error names the file and the reason.
    func load(_ config: GatewayConfig) throws(TLSFilesError)

    /// Adds the TLS server for import `mapping` at the front of an accepted channel's
    /// pipeline, named ``TLSGateHandler/tlsHandlerName``; verification failures are
    /// told to `gate`.
    func addServerHandler(for mapping: String, to channel: any Channel, gate: TLSGateHandler) throws

    /// Adds the TLS client for export `mapping` at the front of a new channel's
    /// pipeline, for a target at `host`.
    func addClientHandler(for mapping: String, host: String, to channel: any Channel, gate: TLSGateHandler) throws

    /// The verified identity of the channel's peer, once its handshake completed.
    func peerIdentity(of channel: any Channel) -> TLSPeerIdentity

    /// What a handshake error (from the channel's TLS handler) means.
    func classify(_ error: any Error) -> TLSHandshakeError
}

/// A certificate, key or CA file that cannot be used.
public struct TLSFilesError: Error, Sendable, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}
