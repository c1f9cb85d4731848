// SPDX-License-Identifier: Apache-2.0
import HMXConfig
import HMXCore
import HMXGateway
import HMXStream
import Testing

@Suite("tls:// mappings, proxy_protocol: accept and callers on other hosts in the configuration")
struct TLSConfigTests {
    static let config = """
        link: {emulator: /a}
        peers: {netvm: 1, web: 2}
        exports:
          - name: remote-db
            port: 5432
            target: tls://db.host-b.example:5433
            allow: [web]
            proxy_protocol: v2
            tls: {ca: ca.pem, certificate: /etc/hmx/netvm-a.pem, key: /etc/hmx/netvm-a.key}
          - name: api
            port: 443
            target: tls://198.51.100.7:443
            allow: [web]
            tls: {server_name: api.example, verify_hostname: false}
          - name: plain-tls
            port: 444
            target: tls://api.example:443
            allow: [web]
          - name: db
            port: 5433
            target: tcp://127.0.0.1:5432
            allow: [web, "web@netvm-a.example", "*@198.51.100.9"]
            relays: [netvm]
        imports:
          - name: db-in
            listen: tls://0.0.0.0:5433
            peer: web
            port: 5433
            tls: {certificate: server.pem, key: server.key, client_ca: hosts-ca.pem, handshake_timeout: 3s}
            proxy_protocol: accept
            trusted_proxies: [netvm-a.example, 192.0.2.0/24]
        """

    @Test("tls: settings with their defaults; relative files are next to the configuration file")
    func settings() throws {
        let config = try GatewayConfig.parse(Self.config, file: "/etc/hmx-gateway/gateway.yaml")
        let remote = try #require(config.exports[0].tls)
        #expect(remote.trust == .file("/etc/hmx-gateway/ca.pem"))
        #expect(remote.serverName == nil && remote.verifyHostname)
        #expect(remote.certificate == "/etc/hmx/netvm-a.pem" && remote.key == "/etc/hmx/netvm-a.key")
        let api = try #require(config.exports[1].tls)
        #expect(api.trust == .system && api.serverName == "api.example" && !api.verifyHostname)
        // A tls:// target without tls: trusts the system's CAs and checks the target's name.
        #expect(
            config.exports[2].tls
                == TLSClientSettings(trust: .system, serverName: nil, verifyHostname: true, certificate: nil, key: nil)
        )
        #expect(config.exports[3].tls == nil)
        let listener = try #require(config.imports[0].tls)
        #expect(listener.certificate == "/etc/hmx-gateway/server.pem")
        #expect(listener.clientCA == "/etc/hmx-gateway/hosts-ca.pem")
        #expect(listener.handshakeTimeoutMilliseconds == 3000)
        #expect(config.imports[0].trustedProxies?.map(\.description) == ["netvm-a.example", "192.0.2.0/24"])
        #expect(config.exports[3].relays == [DomainID(1)])
        #expect(config.exports[3].remoteCallers.map(\.description) == ["web@netvm-a.example", "*@198.51.100.9"])
        // The relay gets a partner ring like any peer an export names.
        #expect(config.partnerDomains.contains(DomainID(1)))
        let summary = config.summary.joined(separator: "\n")
        #expect(summary.contains("TLS certificate /etc/hmx-gateway/server.pem"), "\(summary)")
        #expect(summary.contains("PROXY headers from netvm-a.example, 192.0.2.0/24 only"), "\(summary)")
        #expect(summary.contains("web@netvm-a.example, *@198.51.100.9 relayed by netvm(1)"), "\(summary)")
    }

    @Test("a relay's caller is judged by who it is; anyone else's word on a caller counts for nothing")
    func admission() throws {
        let config = try GatewayConfig.parse(Self.config, file: "gw.yaml")
        func admit(_ peer: UInt16, _ caller: CallerIdentity?) -> GatewayConfig.Admission {
            config.admission(of: DomainID(peer), to: 5433, caller: caller) { _, _ in (0, 0) }
        }
        let web = CallerIdentity(assertedBy: "netvm-a.example", domain: "web", certificateName: nil, tlsVersion: nil)
        let other = CallerIdentity(
            assertedBy: "netvm-a.example",
            domain: "other",
            certificateName: nil,
            tlsVersion: nil
        )
        let byAddress = CallerIdentity(assertedBy: "198.51.100.9", domain: nil, certificateName: nil, tlsVersion: nil)
        let export = config.exports[3]
        #expect(admit(1, web) == .admitted(export))
        #expect(admit(1, byAddress) == .admitted(export))
        #expect(admit(1, other) == .refused(.deniedByGateway, export: "db"))
        // The relay's own connections are not in the allow-list.
        #expect(admit(1, nil) == .refused(.deniedByGateway, export: "db"))
        // web (2) is judged by its stamped id, whatever it claims.
        #expect(admit(2, other) == .admitted(export))
        #expect(admit(3, web) == .refused(.deniedByGateway, export: "db"))
    }

    @Test(
        "errors name file, line, key and reason",
        arguments: [
            (
                "imports:\n  - {name: a, listen: \"tls://127.0.0.1:1\", peer: 2, port: 1}\n",
                "gw.yaml:3: imports[0]: a tls:// listener needs tls: {certificate: FILE, key: FILE}"
            ),
            (
                "imports:\n  - {name: a, listen: \"tcp://127.0.0.1:1\", peer: 2, port: 1, tls: {certificate: c, key: k}}\n",
                "gw.yaml:3: imports[0].tls: tls: settings are for a tls:// listener"
            ),
            (
                "imports:\n  - {name: a, listen: \"tls://127.0.0.1:1\", peer: 2, port: 1, tls: {certificate: c}}\n",
                "gw.yaml:3: imports[0].tls.key: required key is missing"
            ),
            (
                "imports:\n  - {name: a, listen: \"tcp://127.0.0.1:1\", peer: 2, port: 1, proxy_protocol: accept}\n",
                "gw.yaml:3: imports[0].proxy_protocol: say who may send one: trusted_proxies: [CERTIFICATE-NAME or ADDRESS/PREFIX, ...]"
            ),
            (
                "imports:\n  - {name: a, listen: \"tcp://127.0.0.1:1\", peer: 2, port: 1, proxy_protocol: accept, trusted_proxies: [netvm.example]}\n",
                "gw.yaml:3: imports[0].trusted_proxies[0]: a certificate name is only known from a verified client certificate: give tls: {client_ca: FILE}"
            ),
            (
                "imports:\n  - {name: a, listen: \"unix:/tmp/a\", peer: 2, port: 1, proxy_protocol: accept, trusted_proxies: [127.0.0.1]}\n",
                "gw.yaml:3: imports[0].proxy_protocol: PROXY headers are accepted on tcp:// and tls:// listeners"
            ),
            (
                "imports:\n  - {name: a, listen: \"tcp://127.0.0.1:1\", peer: 2, port: 1, proxy_protocol: v2}\n",
                "gw.yaml:3: imports[0].proxy_protocol: an import reads a PROXY header with accept (or none); v2 is an export's, to its target"
            ),
            (
                "exports:\n  - {name: a, port: 1, target: \"tcp://127.0.0.1:1\", allow: [any], tls: {ca: system}}\n",
                "gw.yaml:3: exports[0].tls: tls: settings are for a tls:// target"
            ),
            (
                "exports:\n  - {name: a, port: 1, target: \"tls://h:1\", allow: [any], tls: {key: k}}\n",
                "gw.yaml:3: exports[0].tls.key: a key is for a client certificate: give certificate: too"
            ),
            (
                "exports:\n  - {name: a, port: 1, target: \"tcp://h:1\", allow: [\"web@netvm.example\"]}\n",
                "gw.yaml:3: exports[0].allow: web@netvm.example is a caller on another host: name the domains that relay such callers under relays"
            ),
            (
                "exports:\n  - {name: a, port: 1, target: \"tcp://h:1\", allow: [2], relays: [2]}\n",
                "gw.yaml:3: exports[0].relays: relays are for callers on other hosts (DOMAIN@NAME in allow); there are none"
            ),
            (
                "exports:\n  - {name: a, port: 1, target: \"tcp://h:1\", allow: [\"web@\"], relays: [2]}\n",
                "gw.yaml:3: exports[0].allow[0]: expected DOMAIN@NAME (a domain on another host, and the certificate name or address vouching for it)"
            ),
        ]
    )
    func errors(_ body: String, _ message: String) {
        do {
            _ = try GatewayConfig.parse("link: {emulator: /a}\n" + body, file: "gw.yaml")
            Issue.record("accepted: \(body)")
        } catch {
            #expect(error.description == message)
        }
    }

    @Test("an address in trusted_proxies matches its prefix, also as an IPv4-mapped IPv6 address")
    func networks() throws {
        let network = try #require(IPNetwork("192.0.2.0/24"))
        #expect(network.contains([192, 0, 2, 77]))
        #expect(!network.contains([192, 0, 3, 1]))
        #expect(network.contains([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 192, 0, 2, 1]))
        let one = try #require(IPNetwork("2001:db8::1"))
        #expect(one.length == 128 && one.description == "2001:db8::1/128")
        #expect(IPNetwork("192.0.2.0/33") == nil && IPNetwork("netvm.example") == nil)
    }

    @Test("a server's certificate is for a host by its DNS names (one wildcard label), else its common name")
    func hostnames() {
        let identity = TLSPeerIdentity(commonName: "x", dnsNames: ["db.host-b.example", "*.api.example"], version: nil)
        #expect(identity.matches(hostname: "DB.host-b.example."))
        #expect(identity.matches(hostname: "eu.api.example"))
        #expect(!identity.matches(hostname: "a.eu.api.example") && !identity.matches(hostname: "api.example"))
        #expect(!identity.matches(hostname: "x"))
        #expect(TLSPeerIdentity(commonName: "x", dnsNames: [], version: nil).matches(hostname: "x"))
    }
}
