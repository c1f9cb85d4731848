// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import HMXProxyProtocol
import NIOCore
import Testing

/// HAProxy (Debian's `haproxy` package) is the reference receiver of PROXY v2: it must
/// accept our headers, report the synthetic source, skip the HMX TLVs, and check the CRC.
@Suite(
    "HAProxy accepts the headers",
    .serialized,
    .enabled(
        if: executablePath("haproxy") != nil && executablePath("socat") != nil,
        "needs haproxy and socat from Debian"
    )
)
struct HAProxyInteropTests {
    /// Runs haproxy with a frontend that answers each request with what it learnt from
    /// the PROXY header, sends `header` + a request, and returns haproxy's answer and log.
    private func exchange(_ header: [UInt8]) async throws -> (answer: String, log: String) {
        let directory = try TemporaryDirectory()
        let port = Int.random(in: 20000..<60000)
        let config = try directory.write(
            "haproxy.cfg",
            """
            global
                log stderr format raw local0
            defaults
                mode http
                log global
                timeout connect 2s
                timeout client 5s
                timeout server 5s
            frontend fe
                bind 127.0.0.1:\(port) accept-proxy
                http-request return status 200 content-type text/plain lf-string "src=%[src]:%[src_port] dst=%[dst]:%[dst_port] authority=%[fc_pp_authority] unique=%[fc_pp_unique_id,hex]\\n"

            """
        )
        let haproxy = try ChildProcess("haproxy", ["-db", "-f", config])
        defer { haproxy.signal(SIGKILL) }
        let request = "\(directory.path)/request"
        try Data(header + Array("GET / HTTP/1.0\r\n\r\n".utf8)).write(to: URL(fileURLWithPath: request))
        // haproxy is ready once a plain TCP connection to it succeeds.
        let listening = await eventually(within: 10) {
            (try? await run("socat", ["-u", "OPEN:/dev/null", "TCP:127.0.0.1:\(port)"], seconds: 2).status) == 0
        }
        try #require(listening, "haproxy did not start: \(haproxy.log)")
        let client = try await run(
            "socat",
            ["-t", "2", "-", "TCP:127.0.0.1:\(port),connect-timeout=2"],
            standardInput: request
        )
        try? await Task.sleep(nanoseconds: 100_000_000)
        return (client.output, haproxy.log)
    }

    @Test("an HMX header with CRC32c, authority and unique id over IPv4")
    func hmxIPv4() async throws {
        let header = ProxyHeader.hmx(
            domainID: 2,
            domainName: "beta",
            connectionID: 0x2_1234,
            destination: try SocketAddress(ipAddress: "127.0.0.1", port: 6379),
            extraTLVs: [.authority("redis.hmx"), .uniqueID([0xAB, 0xCD]), .crc32c]
        )
        let (answer, log) = try await self.exchange(try header.encoded().allBytes)
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)\n\(log)")
        #expect(answer.contains("src=100.64.0.2:4660 dst=127.0.0.1:6379 authority=redis.hmx unique=ABCD"), "\(answer)")
    }

    @Test("an HMX header towards an IPv6 target")
    func hmxIPv6() async throws {
        let header = ProxyHeader.hmx(
            domainID: 300,
            connectionID: 5,
            destination: try SocketAddress(ipAddress: "::1", port: 443)
        )
        let (answer, log) = try await self.exchange(try header.encoded().allBytes)
        #expect(answer.contains("src=::ffff:100.64.1.44:5 dst=::1:443"), "\(answer)\n\(log)")
    }

    @Test("a LOCAL header: haproxy uses the real endpoints")
    func local() async throws {
        let (answer, _) = try await self.exchange(try ProxyHeader.local(tlvs: [.hmxDomainID(1)]).encoded().allBytes)
        #expect(answer.contains("src=127.0.0.1:"), "\(answer)")
    }

    @Test("a header whose CRC32c does not match is refused")
    func corrupted() async throws {
        var bytes = try ProxyHeader.hmx(domainID: 2, extraTLVs: [.crc32c]).encoded().allBytes
        bytes[17] ^= 0x40  // the synthetic source address
        let (answer, log) = try await self.exchange(bytes)
        #expect(!answer.contains("200"), "\(answer)")
        #expect(log.contains("invalid PROXY protocol header"), "\(log)")
    }
}
