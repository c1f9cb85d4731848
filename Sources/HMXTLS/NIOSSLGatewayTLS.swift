// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXGateway
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// TLS for the gateway's tls:// mappings on swift-nio-ssl (BoringSSL, built into the
/// binary; see docs/CROSS-HOST.md for why, and for system OpenSSL).
///
/// - TLS 1.2 and 1.3 only; for TLS 1.2 only ECDHE key exchange with AES-GCM or
///   ChaCha20-Poly1305 (forward secrecy, AEAD); TLS 1.3's suites are all of that kind.
/// - Listeners: the certificate chain and key; with `client_ca`, a client must send a
///   certificate that chains to it (full verification, no name check: the name is
///   what allow-lists and `trusted_proxies` look at).
/// - Targets: the configured CAs or the system's, SNI and hostname verification with
///   `server_name` (or the target's host), an optional client certificate.
/// - Contexts are made in ``load(_:)`` and swapped as a whole; a connection keeps the
///   context it started with.
public final class NIOSSLGatewayTLS: GatewayTLS {
    private struct Contexts {
        var servers: [String: NIOSSLContext] = [:]
        var clients: [String: (context: NIOSSLContext, settings: TLSClientSettings)] = [:]
    }

    private let contexts = NIOLockedValueBox(Contexts())

    /// TLS 1.2 cipher suites (BoringSSL's syntax): ECDHE with an AEAD, nothing else.
    static let cipherSuites = "ECDHE+AESGCM:ECDHE+CHACHA20"

    public init() {}

    public func load(_ config: GatewayConfig) throws(TLSFilesError) {
        var contexts = Contexts()
        for importConfig in config.imports {
            guard let settings = importConfig.tls else { continue }
            let place = "\(config.file): import \(importConfig.name)"
            contexts.servers[importConfig.name] = try Self.serverContext(settings, mapping: place)
        }
        for export in config.exports {
            guard let settings = export.tls else { continue }
            let place = "\(config.file): export \(export.name)"
            contexts.clients[export.name] = (try Self.clientContext(settings, mapping: place), settings)
        }
        self.contexts.withLockedValue { $0 = contexts }
    }

    /// - Parameter mapping: where the settings are, for errors (`FILE: import NAME`).
    static func serverContext(_ settings: TLSServerSettings, mapping: String) throws(TLSFilesError) -> NIOSSLContext {
        let chain = try Self.certificates(settings.certificate, mapping: mapping, key: "certificate")
        let key = try Self.privateKey(settings.key, mapping: mapping)
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(key)
        )
        configuration.minimumTLSVersion = .tlsv12
        configuration.cipherSuites = Self.cipherSuites
        if let clientCA = settings.clientCA {
            let roots = try Self.certificates(clientCA, mapping: mapping, key: "client_ca")
            configuration.trustRoots = .certificates(roots)
            configuration.certificateVerification = .noHostnameVerification
            // Clients learn which CAs to pick a certificate for.
            configuration.sendCANameList = true
        }
        return try Self.context(configuration, mapping: mapping, files: [settings.certificate, settings.key])
    }

    static func clientContext(_ settings: TLSClientSettings, mapping: String) throws(TLSFilesError) -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.cipherSuites = Self.cipherSuites
        configuration.certificateVerification = settings.verifyHostname ? .fullVerification : .noHostnameVerification
        if case .file(let path) = settings.trust {
            configuration.trustRoots = .certificates(try Self.certificates(path, mapping: mapping, key: "ca"))
        }
        var files: [String] = []
        if let certificate = settings.certificate, let keyPath = settings.key {
            let chain = try Self.certificates(certificate, mapping: mapping, key: "certificate")
            configuration.certificateChain = chain.map { .certificate($0) }
            configuration.privateKey = .privateKey(try Self.privateKey(keyPath, mapping: mapping))
            files = [certificate, keyPath]
        }
        return try Self.context(configuration, mapping: mapping, files: files)
    }

    private static func certificates(
        _ path: String,
        mapping: String,
        key: String
    ) throws(TLSFilesError) -> [NIOSSLCertificate] {
        try Self.checkReadable(path, mapping: mapping, key: key)
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw TLSFilesError("\(mapping): tls.\(key): \(path): not a PEM certificate file (\(error))")
        }
        guard !certificates.isEmpty else {
            throw TLSFilesError("\(mapping): tls.\(key): \(path): no certificate in the file")
        }
        return certificates
    }

    private static func privateKey(_ path: String, mapping: String) throws(TLSFilesError) -> NIOSSLPrivateKey {
        try Self.checkReadable(path, mapping: mapping, key: "key")
        do {
            return try NIOSSLPrivateKey(file: path, format: .pem)
        } catch {
            throw TLSFilesError("\(mapping): tls.key: \(path): not a PEM private key (\(error))")
        }
    }

    private static func checkReadable(_ path: String, mapping: String, key: String) throws(TLSFilesError) {
        guard access(path, R_OK) == 0 else {
            let reason = String(cString: strerror(errno))
            throw TLSFilesError("\(mapping): tls.\(key): \(path): cannot read: \(reason)")
        }
    }

    private static func context(
        _ configuration: TLSConfiguration,
        mapping: String,
        files: [String]
    ) throws(TLSFilesError) -> NIOSSLContext {
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            // Most often a key that does not belong to the certificate.
            let named = files.isEmpty ? "" : " (\(files.joined(separator: ", ")))"
            throw TLSFilesError("\(mapping): tls\(named): the certificate and key cannot be used together: \(error)")
        }
    }

    // MARK: - Handlers

    public func addServerHandler(for mapping: String, to channel: any Channel, gate: TLSGateHandler) throws {
        guard let context = self.contexts.withLockedValue({ $0.servers[mapping] }) else {
            throw TLSFilesError("\(mapping): no TLS certificate loaded")
        }
        let handler = try LegacyVerification.handlers.server(context: context, gate: gate)
        try channel.pipeline.syncOperations.addHandler(handler, name: TLSGateHandler.tlsHandlerName)
    }

    public func addClientHandler(
        for mapping: String,
        host: String,
        to channel: any Channel,
        gate: TLSGateHandler
    ) throws {
        guard let (context, settings) = self.contexts.withLockedValue({ $0.clients[mapping] }) else {
            throw TLSFilesError("\(mapping): no TLS settings loaded")
        }
        // SNI carries names only; an address target is checked as an address.
        let serverName = settings.serverName ?? host
        let handler = try LegacyVerification.handlers.client(context: context, serverHostname: serverName, gate: gate)
        try channel.pipeline.syncOperations.addHandler(handler, name: TLSGateHandler.tlsHandlerName)
    }

    public func peerIdentity(of channel: any Channel) -> TLSPeerIdentity {
        let handler = try? channel.pipeline.syncOperations.handler(type: NIOSSLHandler.self)
        let certificate = handler?.peerCertificate
        let commonName = certificate?.subjectName.last { $0.type == .commonName }?.value
        var dnsNames: [String] = []
        if let names = certificate?._subjectAlternativeNames() {
            for name in names where name.nameType == .dnsName {
                dnsNames.append(name.contents.withUnsafeBufferPointer { String(decoding: $0, as: UTF8.self) })
            }
        }
        let version: String? =
            switch handler?.tlsVersion {
            case .tlsv13: "TLSv1.3"
            case .tlsv12: "TLSv1.2"
            case .tlsv11: "TLSv1.1"
            case .tlsv1: "TLSv1"
            case nil: nil
            }
        return TLSPeerIdentity(commonName: commonName, dnsNames: dnsNames, version: version)
    }

    public func classify(_ error: any Error) -> TLSHandshakeError {
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return TLSHandshakeError(.hostnameMismatch, "\(extra)")
        }
        let reasons = Self.reasons(error)
        if reasons.contains("ALERT") {
            // The peer refused us (our certificate, our offer); its alert says why.
            return TLSHandshakeError(.handshakeFailed, "the peer's alert: \(reasons)")
        }
        if reasons.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") {
            return TLSHandshakeError(.noClientCertificate, "the client sent no certificate (\(reasons))")
        }
        if reasons.contains("CERTIFICATE_VERIFY_FAILED") {
            return TLSHandshakeError(.untrusted, "the peer's certificate was refused (\(reasons))")
        }
        return TLSHandshakeError(.handshakeFailed, reasons)
    }

    /// BoringSSL's reasons (like `CERTIFICATE_VERIFY_FAILED`) of a handshake error,
    /// without the source locations; other errors as they describe themselves.
    static func reasons(_ error: any Error) -> String {
        guard let sslError = error as? NIOSSLError, case .handshakeFailed(let boring) = sslError,
            case .sslError(let stack) = boring
        else { return "\(error)" }
        let reasons = stack.map { entry in
            let text = entry.description
            guard let range = text.range(of: "OPENSSL_internal:") else { return text }
            return String(text[range.upperBound...].prefix { $0 != " " })
        }
        return reasons.joined(separator: ", ")
    }
}

/// The handlers made with swift-nio-ssl's per-certificate verification callback: it
/// sees BoringSSL's verdict on each certificate of the chain (the verification stays
/// BoringSSL's), which is how an expired certificate is told from an untrusted one
/// (the handshake error says only that verification failed). The newer callbacks
/// replace BoringSSL's verification instead; this one is marked deprecated, so it is
/// reached through a protocol, where the deprecation is the implementation's alone.
private protocol VerifyingHandlers {
    static func server(context: NIOSSLContext, gate: TLSGateHandler) throws -> NIOSSLServerHandler
    static func client(
        context: NIOSSLContext,
        serverHostname: String,
        gate: TLSGateHandler
    ) throws
        -> NIOSSLClientHandler
}

private enum LegacyVerification: VerifyingHandlers {
    @available(*, deprecated, message: "swift-nio-ssl's per-certificate callback: see VerifyingHandlers")
    static func server(context: NIOSSLContext, gate: TLSGateHandler) throws -> NIOSSLServerHandler {
        try NIOSSLServerHandler(context: context, verificationCallback: Self.callback(gate))
    }

    @available(*, deprecated, message: "swift-nio-ssl's per-certificate callback: see VerifyingHandlers")
    static func client(
        context: NIOSSLContext,
        serverHostname: String,
        gate: TLSGateHandler
    ) throws
        -> NIOSSLClientHandler
    {
        let name = IPNetwork(serverHostname) == nil ? serverHostname : nil
        return try NIOSSLClientHandler(
            context: context,
            serverHostname: name,
            verificationCallback: Self.callback(gate)
        )
    }

    /// Notes why BoringSSL refused a certificate: out of its validity period, or not
    /// trusted (anything else).
    static func callback(_ gate: TLSGateHandler) -> NIOSSLVerificationCallback {
        { [weak gate] result, certificate in
            guard result == .failed else { return result }
            let now = time(nil)
            let subject = certificate.subjectName.last { $0.type == .commonName }?.value ?? "(no common name)"
            if certificate.notValidAfter < now {
                gate?.verificationFailed(TLSHandshakeError(.expired, "the certificate of \(subject) has expired"))
            } else if certificate.notValidBefore > now {
                gate?.verificationFailed(TLSHandshakeError(.expired, "the certificate of \(subject) is not valid yet"))
            } else {
                gate?.verificationFailed(
                    TLSHandshakeError(.untrusted, "the certificate of \(subject) does not chain to a trusted CA")
                )
            }
            return result
        }
    }
}

extension LegacyVerification {
    static var handlers: any VerifyingHandlers.Type { Self.self }
}
