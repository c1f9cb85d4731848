// SPDX-License-Identifier: Apache-2.0
import HMXGateway
import HMXProcessTestSupport
import HMXTLS
import Testing

/// Loading certificates and keys: what the gateway does at start, on SIGHUP and in
/// `check-config`. Certificates are made by the test with openssl.
@Suite("TLS certificates and keys: loading, errors that name file and key")
struct CertificateLoadingTests {
    /// A self-signed certificate and key for `name` in `directory` (`NAME.pem`, `NAME.key`).
    static func certificate(_ name: String, in directory: TemporaryDirectory) async throws {
        let result = try await run(
            "openssl",
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=\(name)", "-keyout", "\(directory.path)/\(name).key", "-out",
                "\(directory.path)/\(name).pem",
            ]
        )
        try #require(result.status == 0, "openssl: \(result.output)")
    }

    static func config(_ directory: TemporaryDirectory, certificate: String, key: String) throws -> GatewayConfig {
        let text = """
            link: {emulator: /a}
            imports:
              - name: web
                listen: tls://127.0.0.1:1
                peer: 2
                port: 1
                tls: {certificate: \(certificate), key: \(key), client_ca: a.pem}
            exports:
              - {name: api, port: 1, target: "tls://api.example:443", allow: [2], tls: {ca: a.pem}}
            """
        return try GatewayConfig.parse(text, file: try directory.write("gateway.yaml", text))
    }

    @Test("good files load; a missing, unreadable or foreign file is refused with the mapping, key, file and reason")
    func errors() async throws {
        let directory = try TemporaryDirectory()
        try await Self.certificate("a", in: directory)
        try await Self.certificate("b", in: directory)
        _ = try directory.write("garbage.pem", "not a certificate\n")
        let tls = NIOSSLGatewayTLS()
        try tls.load(try Self.config(directory, certificate: "a.pem", key: "a.key"))
        let file = "\(directory.path)/gateway.yaml"
        let cases: [(String, String, String)] = [
            (
                "missing.pem", "a.key",
                "\(file): import web: tls.certificate: \(directory.path)/missing.pem: cannot read: No such file or directory"
            ),
            ("garbage.pem", "a.key", "\(file): import web: tls.certificate: \(directory.path)/garbage.pem: "),
            (
                "a.pem", "garbage.pem",
                "\(file): import web: tls.key: \(directory.path)/garbage.pem: not a PEM private key"
            ),
            (
                "a.pem", "b.key",
                "\(file): import web: tls (\(directory.path)/a.pem, \(directory.path)/b.key): the certificate and key cannot be used together"
            ),
        ]
        for (certificate, key, message) in cases {
            do {
                try tls.load(try Self.config(directory, certificate: certificate, key: key))
                Issue.record("\(certificate) with \(key) loaded")
            } catch {
                #expect("\(error)".hasPrefix(message), "\(error)")
            }
        }
    }
}
