// SPDX-License-Identifier: Apache-2.0
import HMXConfig

// The `tls:` settings of tls:// mappings, `proxy_protocol: accept` with its
// `trusted_proxies`, and callers on other hosts in allow-lists (docs/CONFIG.md,
// docs/CROSS-HOST.md).
extension GatewayConfig {
    /// A file named in the configuration: absolute, or relative to the configuration
    /// file's folder.
    static func filePath(_ node: ConfigNode) throws(ConfigError) -> String {
        let text = try node.string()
        guard !text.isEmpty else { throw node.error("expected a file path") }
        if text.hasPrefix("/") { return text }
        guard let slash = node.file.lastIndex(of: "/") else { return text }
        return String(node.file[...slash]) + text
    }

    /// An import's `tls:`: needed by a tls:// listener, refused elsewhere.
    static func serverTLS(_ entry: ConfigMapping, listen: Endpoint) throws(ConfigError) -> TLSServerSettings? {
        guard let node = entry.optional("tls") else {
            if listen.isTLS {
                throw entry.owner.error("a tls:// listener needs tls: {certificate: FILE, key: FILE}")
            }
            return nil
        }
        guard listen.isTLS else { throw node.error("tls: settings are for a tls:// listener") }
        let tls = try node.mapping()
        let certificate = try Self.filePath(try tls.required("certificate"))
        let key = try Self.filePath(try tls.required("key"))
        let clientCA = try tls.optional("client_ca").map { node throws(ConfigError) in try Self.filePath(node) }
        let timeoutNode = tls.optional("handshake_timeout")
        let timeout =
            try timeoutNode.map { node throws(ConfigError) in try Self.duration(node) }
            ?? TLSServerSettings.defaultHandshakeTimeoutMilliseconds
        if let timeoutNode, timeout == 0 { throw timeoutNode.error("must be longer than 0") }
        try tls.finish(known: ["certificate", "key", "client_ca", "handshake_timeout"])
        return TLSServerSettings(
            certificate: certificate,
            key: key,
            clientCA: clientCA,
            handshakeTimeoutMilliseconds: timeout
        )
    }

    /// An export's `tls:`: needed by a tls:// target, refused elsewhere.
    static func clientTLS(_ entry: ConfigMapping, target: Endpoint) throws(ConfigError) -> TLSClientSettings? {
        guard let node = entry.optional("tls") else {
            // A tls:// target with the defaults: the system's CAs, the target's name.
            return target.isTLS
                ? TLSClientSettings(trust: .system, serverName: nil, verifyHostname: true, certificate: nil, key: nil)
                : nil
        }
        guard target.isTLS else { throw node.error("tls: settings are for a tls:// target") }
        let tls = try node.mapping()
        var trust = TLSClientSettings.Trust.system
        if let caNode = tls.optional("ca"), try caNode.string() != "system" {
            trust = .file(try Self.filePath(caNode))
        }
        let serverNameNode = tls.optional("server_name")
        let serverName = try serverNameNode?.string()
        if let serverNameNode, let serverName, serverName.isEmpty || serverName.utf8.count > 253 {
            throw serverNameNode.error("expected a host name of 1 to 253 bytes")
        }
        let verifyHostname = try tls.optional("verify_hostname")?.bool() ?? true
        let certificateNode = tls.optional("certificate")
        let keyNode = tls.optional("key")
        let certificate = try certificateNode.map { node throws(ConfigError) in try Self.filePath(node) }
        let key = try keyNode.map { node throws(ConfigError) in try Self.filePath(node) }
        if certificate != nil, key == nil { throw certificateNode!.error("a client certificate needs its key: too") }
        if key != nil, certificate == nil {
            throw keyNode!.error("a key is for a client certificate: give certificate: too")
        }
        try tls.finish(known: ["ca", "server_name", "verify_hostname", "certificate", "key"])
        return TLSClientSettings(
            trust: trust,
            serverName: serverName,
            verifyHostname: verifyHostname,
            certificate: certificate,
            key: key
        )
    }

    /// An import's `proxy_protocol: accept` and `trusted_proxies`.
    static func trustedProxies(
        _ entry: ConfigMapping,
        listen: Endpoint,
        tls: TLSServerSettings?
    ) throws(ConfigError) -> [TrustedProxy]? {
        let proxyNode = entry.optional("proxy_protocol")
        let listNode = entry.optional("trusted_proxies")
        guard let proxyNode else {
            if let listNode { throw listNode.error("trusted_proxies go with proxy_protocol: accept") }
            return nil
        }
        let value = try proxyNode.string()
        if value == "none" {
            if let listNode { throw listNode.error("trusted_proxies go with proxy_protocol: accept") }
            return nil
        }
        guard value == "accept" else {
            throw proxyNode.error(
                "an import reads a PROXY header with accept (or none); v2 is an export's, to its target"
            )
        }
        switch listen {
        case .tcp, .tls: break
        case .unix, .vsock, .seqpacket, .udp, .unixDatagram:
            throw proxyNode.error("PROXY headers are accepted on tcp:// and tls:// listeners")
        }
        guard let listNode else {
            throw proxyNode.error("say who may send one: trusted_proxies: [CERTIFICATE-NAME or ADDRESS/PREFIX, ...]")
        }
        var trusted: [TrustedProxy] = []
        for item in try listNode.sequence() {
            let text = try item.string()
            if let network = IPNetwork(text) {
                trusted.append(.address(network))
                continue
            }
            guard Self.isCertificateName(text) else {
                throw item.error("expected a certificate name (like netvm.host-a.example) or an address prefix")
            }
            guard tls?.clientCA != nil else {
                throw item.error(
                    "a certificate name is only known from a verified client certificate: give tls: {client_ca: FILE}"
                )
            }
            trusted.append(.certificate(text))
        }
        if trusted.isEmpty { throw listNode.error("name at least one trusted proxy") }
        return trusted
    }

    /// `DOMAIN@NAME` or `*@NAME` in an allow-list.
    static func remoteCaller(_ node: ConfigNode) throws(ConfigError) -> RemoteCaller {
        let text = try node.string()
        let parts = text.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty,
            Self.isCertificateName(String(parts[1])) || IPNetwork(String(parts[1])) != nil
        else {
            throw node.error(
                "expected DOMAIN@NAME (a domain on another host, and the certificate name or address vouching for it)"
            )
        }
        let domain = parts[0] == "*" ? nil : String(parts[0])
        if let domain, !Self.isValidName(domain) {
            throw node.error("domain names are letters, digits, '-', '_' or '.', or * for any")
        }
        return RemoteCaller(domain: domain, assertedBy: String(parts[1]))
    }

    /// A DNS-like name, like `netvm.host-a.example`.
    static func isCertificateName(_ text: String) -> Bool {
        (1...253).contains(text.utf8.count)
            && text.utf8.allSatisfy { byte in
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                    || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                    || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "-")
                    || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
            }
    }
}
