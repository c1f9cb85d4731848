// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXProcessTestSupport
import Testing

extension GatewayEndToEndTests {
    /// The stream promises: exact bytes, half-close, backpressure, many connections.
    @Suite("streams")
    struct Streams {
        /// An upload (alpha sends to a socat sink in beta) and a download (a socat source in
        /// beta sends to alpha) of `bytes` random bytes each, through an export/import pair
        /// per direction; each side keeps the sha256 of what it sent or received.
        struct BulkTransfers {
            let lab: GatewayLab
            let bytes: Int
            let path: String
            let uploadPort: Int
            let downloadPort: Int
            let exports: [GatewayLab.Export]
            let imports: [GatewayLab.Import]
            /// beta's sink and source, started at once (they listen).
            let receiver: ChildProcess
            let source: ChildProcess

            /// Uses lab ports `firstPort`…`firstPort + 3` and HMX service ports `servicePort`
            /// and `servicePort + 1`.
            init(_ lab: GatewayLab, bytes: Int, firstPort: Int, servicePort: Int) throws {
                self.lab = lab
                self.bytes = bytes
                self.path = lab.directory.path
                let (uploadTarget, downloadTarget) = (lab.port(firstPort), lab.port(firstPort + 1))
                (self.uploadPort, self.downloadPort) = (lab.port(firstPort + 2), lab.port(firstPort + 3))
                self.exports = [
                    .init(name: "upload", port: servicePort, target: "tcp://127.0.0.1:\(uploadTarget)"),
                    .init(name: "download", port: servicePort + 1, target: "tcp://127.0.0.1:\(downloadTarget)"),
                ]
                self.imports = [
                    .init(name: "upload", listen: "tcp://127.0.0.1:\(self.uploadPort)", port: servicePort),
                    .init(name: "download", listen: "tcp://127.0.0.1:\(self.downloadPort)", port: servicePort + 1),
                ]
                self.receiver = try lab.shell(
                    .beta,
                    "socat -u TCP-LISTEN:\(uploadTarget),bind=127.0.0.1,reuseaddr - | sha256sum > \(self.path)/upload.received"
                )
                self.source = try lab.shell(
                    .beta,
                    "head -c \(bytes) /dev/urandom | tee >(sha256sum > \(self.path)/download.sent) | socat -u - TCP-LISTEN:\(downloadTarget),bind=127.0.0.1,reuseaddr"
                )
            }

            /// Starts both gateways with `ringSize` rings and `limits` (YAML mapping lines),
            /// metrics on lab ports 54 (alpha) and 55 (beta); returns the metrics ports.
            func startGateways(ringSize: Int, limits: String) async throws -> [GatewayLab.Domain: Int] {
                let metricsPort = [GatewayLab.Domain.alpha: self.lab.port(54), .beta: self.lab.port(55)]
                try await self.lab.startGateways(
                    exports: self.exports,
                    imports: self.imports,
                    ringSize: ringSize,
                    extra: metricsPort.mapValues { "metrics:\n  listen: tcp://127.0.0.1:\($0)\nlimits:\n  \(limits)\n" }
                )
                return metricsPort
            }

            func startUpload() throws -> ChildProcess {
                try self.lab.shell(
                    .alpha,
                    "head -c \(self.bytes) /dev/urandom | tee >(sha256sum > \(self.path)/upload.sent) | socat -u - TCP:127.0.0.1:\(self.uploadPort)"
                )
            }

            func startDownload() throws -> ChildProcess {
                try self.lab.shell(
                    .alpha,
                    "socat -u TCP:127.0.0.1:\(self.downloadPort) - | sha256sum > \(self.path)/download.received"
                )
            }

            /// The upload's sender and receiver both ended well and saw the same bytes.
            func expectUploadExact(_ sender: ChildProcess, seconds: Double) async throws {
                #expect(
                    await sender.wait(seconds: seconds) == 0,
                    "upload sender: \(sender.log)\n\(self.lab.gatewayLogs)"
                )
                #expect(
                    await self.receiver.wait(seconds: 30) == 0,
                    "upload receiver did not see the end of the stream: \(self.receiver.log)"
                )
                #expect(try await self.sameDigest("upload.sent", "upload.received"))
            }

            /// The download's receiver and source both ended well and saw the same bytes.
            func expectDownloadExact(_ downloader: ChildProcess, seconds: Double) async throws {
                #expect(
                    await downloader.wait(seconds: seconds) == 0,
                    "download receiver: \(downloader.log)\n\(self.lab.gatewayLogs)"
                )
                #expect(await self.source.wait(seconds: 30) == 0, "download sender: \(self.source.log)")
                #expect(try await self.sameDigest("download.sent", "download.received"))
            }

            /// Both files hold the same 64-hex-digit digest (tee's process substitution may
            /// finish a moment after the pipeline).
            private func sameDigest(_ first: String, _ second: String) async throws -> Bool {
                let path = self.path
                func digest(_ name: String) -> String? {
                    let text = (try? String(contentsOfFile: "\(path)/\(name)", encoding: .utf8)) ?? ""
                    return text.count >= 64 ? String(text.prefix(64)) : nil
                }
                _ = await eventually(within: 10) { digest(first) != nil && digest(second) != nil }
                let (a, b) = (digest(first), digest(second))
                #expect(a != nil && a == b, "\(first) \(a ?? "missing") vs \(second) \(b ?? "missing")")
                return a != nil && a == b
            }
        }

        @Test(
            "256 MiB each way with socat, sha256 equal; the sender's close ends the receiver",
            .timeLimit(.minutes(6))
        )
        func largeFiles() async throws {
            let lab = try await GatewayLab()
            let transfers = try BulkTransfers(lab, bytes: 256 << 20, firstPort: 30, servicePort: 9001)
            try await lab.startGateways(exports: transfers.exports, imports: transfers.imports)
            // One direction after the other.
            try await transfers.expectUploadExact(try transfers.startUpload(), seconds: 150)
            try await transfers.expectDownloadExact(try transfers.startDownload(), seconds: 150)
        }

        @Test(
            "the importing gateway starts first: both still learn the other's ring size and send large messages",
            .timeLimit(.minutes(2))
        )
        func messageSizeLearntInEitherStartOrder() async throws {
            let lab = try await GatewayLab()
            let metricsPort = [GatewayLab.Domain.alpha: lab.port(45), .beta: lab.port(46)]
            func metrics(_ domain: GatewayLab.Domain) -> String {
                "metrics:\n  listen: tcp://127.0.0.1:\(metricsPort[domain]!)\n"
            }
            // alpha (the importer) comes up while beta has no gateway, so no ring for alpha.
            try lab.startGateway(
                .alpha,
                config: try lab.gatewayConfig(.alpha, exports: [], imports: [lab.echoImport], extra: metrics(.alpha))
            )
            try await Task.sleep(for: .seconds(1.5))
            try await lab.startToolServer(.beta, ["echo-server", "--port", "\(lab.echoTarget)"])
            try lab.startGateway(
                .beta,
                config: try lab.gatewayConfig(.beta, exports: [lab.echoExport], imports: [], extra: metrics(.beta))
            )
            let probe = try await lab.runTool(
                .alpha,
                ["probe", "--port", "\(lab.echoPort)", "--timeout", "30"],
                seconds: 40
            )
            try #require(probe.status == 0, "echo through the gateways: \(probe.output)\n\(lab.gatewayLogs)")

            let bytes = 16 << 20
            let client = try await lab.runTool(
                .alpha,
                ["half-close", "--port", "\(lab.echoPort)", "--bytes", "\(bytes)"],
                seconds: 60
            )
            #expect(client.status == 0, "\(client.output)\n\(lab.gatewayLogs)")
            #expect(client.output.hasPrefix("ok \(bytes) bytes after half-close"), "\(client.output)")

            // Bytes per message each way: with the 4000-byte default the average stays below
            // it; with the learnt size (the peer's 1 MiB ring) the bulk goes in up to 256 KiB.
            for domain in GatewayLab.Domain.allCases {
                let metrics = try await lab.metrics(domain, port: metricsPort[domain]!)
                let sentBytes = try #require(metrics["hmx_bytes_total{direction=\"to_peer\"}"], "\(metrics)")
                let sentMessages = try #require(metrics["hmx_messages_total{direction=\"sent\"}"], "\(metrics)")
                #expect(sentBytes >= Double(bytes), "\(domain) sent \(sentBytes) bytes")
                #expect(sentBytes / sentMessages > 16384, "\(domain): \(sentBytes) bytes in \(sentMessages) messages")
            }
        }

        @Test(
            "tiny rings: many messages find the ring full and are retried, both streams stay exact",
            .timeLimit(.minutes(3))
        )
        func ringFullRetriesKeepOrder() async throws {
            let lab = try await GatewayLab()
            let transfers = try BulkTransfers(lab, bytes: 24 << 20, firstPort: 50, servicePort: 9011)
            // 16 KiB rings: every message is up to a whole ring. A gateway keeps at most a
            // ring's worth on the way (one message here); with eight allowed, most find the
            // ring full, are retried after the wake-up, and arrive out of order.
            let metricsPort = try await transfers.startGateways(ringSize: 16384, limits: "peer_in_flight: 131072")
            // Both directions at once.
            let sender = try transfers.startUpload()
            let downloader = try transfers.startDownload()
            try await transfers.expectUploadExact(sender, seconds: 120)
            try await transfers.expectDownloadExact(downloader, seconds: 120)
            var ringFull = 0.0
            var outOfOrder = 0.0
            for domain in GatewayLab.Domain.allCases {
                let metrics = try await lab.metrics(domain, port: metricsPort[domain]!)
                ringFull += metrics["hmx_ring_full_total"] ?? 0
                outOfOrder += metrics["hmx_messages_out_of_order_total"] ?? 0
                #expect(metrics["hmx_malformed_messages_total"] == 0, "\(domain): \(metrics)")
            }
            #expect(ringFull > 0, "no message found a ring full: the test did not test retries")
            #expect(outOfOrder > 0, "no message arrived out of order: the test did not test reordering")
            #expect(!lab.gatewayLogs.contains("malformed"), "\(lab.gatewayLogs)")
        }

        @Test(
            "a window larger than the ring: at most a ring's worth on the way, so few messages find the ring full",
            .timeLimit(.minutes(3))
        )
        func inFlightBoundedByRing() async throws {
            let lab = try await GatewayLab()
            let transfers = try BulkTransfers(lab, bytes: 64 << 20, firstPort: 50, servicePort: 9011)
            // 64 KiB rings and a 1 MiB window: the credit lets a connection put 16 rings'
            // worth on the way. Without the bound, eight 64 KiB messages went out at once
            // and nearly every one came back ring-full (EAGAIN) and was sent again.
            let metricsPort = try await transfers.startGateways(ringSize: 65536, limits: "window: 1048576")
            let sender = try transfers.startUpload()
            try await transfers.expectUploadExact(sender, seconds: 120)
            let metrics = try await lab.metrics(.alpha, port: metricsPort[.alpha]!)
            let sent = try #require(metrics["hmx_messages_total{direction=\"sent\"}"], "\(metrics)")
            let ringFull = metrics["hmx_ring_full_total"] ?? 0
            #expect(sent > 1000, "\(metrics)")
            #expect(ringFull < sent / 4, "\(ringFull) of \(sent) messages found the ring full")
        }

        @Test(
            "half-close, then a slow start to reading: the reply waits in the gateway and arrives whole before EOF",
            .timeLimit(.minutes(2))
        )
        func halfCloseSlowReader() async throws {
            let lab = try await GatewayLab()
            let target = lab.port(42)
            let importPort = lab.port(43)
            try await lab.startToolServer(.beta, ["echo-server", "--port", "\(target)", "--reply-after-eof", "0"])
            try await lab.startGateways(
                exports: [.init(name: "echo-late-reader", port: 9004, target: "tcp://127.0.0.1:\(target)")],
                imports: [.init(name: "echo-late-reader", listen: "tcp://127.0.0.1:\(importPort)", port: 9004)]
            )
            // The client's input is shut before the peer's FIN comes, and the reply's last
            // window still waits to be written when it does: shutting the output then must
            // not drop it (a full close would).
            let bytes = 32 << 20
            let client = try await lab.runTool(
                .alpha,
                [
                    "half-close", "--port", "\(importPort)", "--bytes", "\(bytes)", "--read-delay", "3", "--timeout",
                    "60",
                ],
                seconds: 90
            )
            #expect(client.status == 0, "\(client.output)\n\(lab.gatewayLogs)")
            #expect(client.output.hasPrefix("ok \(bytes) bytes after half-close"), "\(client.output)")
        }

        @Test("half-close: the client shuts its write side and still reads the whole reply", .timeLimit(.minutes(2)))
        func halfClose() async throws {
            let lab = try await GatewayLab()
            let target = lab.port(40)
            let importPort = lab.port(41)
            let server = try await lab.startToolServer(
                .beta,
                ["echo-server", "--port", "\(target)", "--reply-after-eof", "1"]
            )
            try await lab.startGateways(
                exports: [.init(name: "late-echo", port: 9003, target: "tcp://127.0.0.1:\(target)")],
                imports: [.init(name: "late-echo", listen: "tcp://127.0.0.1:\(importPort)", port: 9003)]
            )
            let client = try await lab.runTool(
                .alpha,
                ["half-close", "--port", "\(importPort)", "--bytes", "\(4 << 20)"],
                seconds: 60
            )
            #expect(client.status == 0, "\(client.output)\n\(lab.gatewayLogs)")
            #expect(client.output.hasPrefix("ok 4194304 bytes after half-close"), "\(client.output)")
            #expect(await eventually { server.output.contains("closed eof after 4194304 bytes") }, "\(server.log)")

            // socat's own half-close: its input ends, the reply still arrives.
            let socat = try lab.shell(.alpha, "printf 'one line\\n' | socat -t 10 - TCP:127.0.0.1:\(importPort)")
            #expect(await socat.wait(seconds: 30) == 0, "\(socat.log)")
            #expect(socat.output == "one line\n")
        }

        @Test(
            "a slow reader: the gateways' memory stays bounded and another connection keeps its speed",
            .timeLimit(.minutes(4))
        )
        func slowReader() async throws {
            let lab = try await GatewayLab()
            let target = lab.port(50)
            let importPort = lab.port(51)
            let source = try await lab.startToolServer(.beta, ["source-server", "--port", "\(target)"])
            let metricsPort = lab.port(52)
            try await lab.startGateways(
                exports: [.init(name: "source", port: 9004, target: "tcp://127.0.0.1:\(target)")],
                imports: [.init(name: "source", listen: "tcp://127.0.0.1:\(importPort)", port: 9004)],
                extra: [.alpha: "metrics:\n  listen: tcp://127.0.0.1:\(metricsPort)\n"]
            )
            let fast = ["sink", "--port", "\(importPort)", "--bytes", "\(128 << 20)", "--timeout", "60"]
            _ = try await lab.runTool(.alpha, fast, seconds: 90)  // warms both gateways up
            let alone = try #require(
                sinkRate(try await lab.runTool(.alpha, fast, seconds: 90)),
                "sink alone failed\n\(lab.gatewayLogs)"
            )
            let gateways = [GatewayLab.Domain.alpha, .beta].compactMap { lab.gateways[$0] }
            let before = gateways.map { $0.residentKiB() ?? 0 }
            let sampler = Task {
                var peak = before
                while !Task.isCancelled {
                    for (index, gateway) in gateways.enumerated() {
                        peak[index] = max(peak[index], gateway.residentKiB() ?? 0)
                    }
                    try? await Task.sleep(nanoseconds: 50_000_000)
                }
                return peak
            }

            // 64 KiB/s against a source that sends hundreds of MB/s, for at least 15 s and
            // until the fast transfers are done.
            let slow = try lab.tool(
                .alpha,
                ["slow-reader", "--port", "\(importPort)", "--rate", "65536", "--seconds", "200"]
            )
            let slowStarted = Date()
            try await Task.sleep(nanoseconds: 3_000_000_000)
            var rates: [Double] = []
            for _ in 0..<2 where (rates.max() ?? 0) < alone * 0.5 {
                rates.append(sinkRate(try await lab.runTool(.alpha, fast, seconds: 90)) ?? 0)
            }
            let remaining = 15 - Date().timeIntervalSince(slowStarted)
            if remaining > 0 { try await Task.sleep(nanoseconds: UInt64(remaining * 1e9)) }
            #expect(slow.isRunning, "the slow reader kept reading during the fast transfers: \(slow.log)")
            // The fast readers' windows grew and went back to the pool when they ended;
            // the slow reader, alone now, holds at most its own growth to twice the ring
            // (its window grew only while its socket buffer was filling).
            var metrics: [String: Double] = [:]
            let settled = try await eventually(within: 10) {
                metrics = try await lab.metrics(.alpha, port: metricsPort)
                return metrics["hmx_active_connections"] == 1
            }
            #expect(settled, "the fast readers' connections did not end: \(metrics)\n\(lab.gatewayLogs)")
            #expect((metrics["hmx_window_growths_total"] ?? 0) > 0, "\(metrics)")
            let held = try #require(metrics["hmx_window_pool_bytes"], "\(metrics)")
            #expect(held <= Double(2 * 1_048_512 - (256 << 10)), "\(metrics)")
            slow.signal(SIGTERM)
            #expect(await slow.wait(seconds: 10) == 0, "\(slow.log)")
            sampler.cancel()
            let peak = await sampler.value
            #expect(slow.output.contains("ok slow reader read"), "\(slow.log)")
            #expect((rates.max() ?? 0) >= alone * 0.5, "alone \(alone) MB/s, next to the slow reader \(rates) MB/s")
            for (index, gateway) in gateways.enumerated() {
                // An unbounded buffer would hold gigabytes after 15 s of a source this fast.
                #expect(
                    peak[index] > 0 && peak[index] - before[index] < 192 * 1024,
                    "gateway \(gateway.pid) grew from \(before[index]) KiB to \(peak[index]) KiB"
                )
            }
            #expect(source.isRunning)
        }

        @Test(
            "clients that close in the middle of a download: every connection ends on both sides, none lingers",
            .timeLimit(.minutes(2))
        )
        func clientsCloseMidDownload() async throws {
            let lab = try await GatewayLab()
            let target = lab.port(90)
            let importPort = lab.port(91)
            let metricsPort = [GatewayLab.Domain.alpha: lab.port(92), .beta: lab.port(93)]
            let source = try await lab.startToolServer(.beta, ["source-server", "--port", "\(target)"])
            try await lab.startGateways(
                exports: [.init(name: "source", port: 9008, target: "tcp://127.0.0.1:\(target)")],
                imports: [.init(name: "source", listen: "tcp://127.0.0.1:\(importPort)", port: 9008)],
                extra: metricsPort.mapValues { "metrics:\n  listen: tcp://127.0.0.1:\($0)\n" }
            )
            // Each client reads 16 MiB of an endless stream and closes. When its receive
            // buffer happens to be empty it closes with a FIN, and the gateway's next
            // writes fail: those bytes are lost, the source's credit is spent, and the
            // connection must be reset rather than wait for data that cannot come.
            let rounds = 20
            for round in 0..<rounds {
                let sink = try await lab.runTool(
                    .alpha,
                    ["sink", "--port", "\(importPort)", "--bytes", "\(16 << 20)", "--timeout", "30"],
                    seconds: 40
                )
                try #require(sink.status == 0, "round \(round): \(sink.output)\n\(lab.gatewayLogs)")
            }
            for domain in GatewayLab.Domain.allCases {
                var metrics: [String: Double] = [:]
                let ended = try await eventually(within: 5) {
                    metrics = try await lab.metrics(domain, port: metricsPort[domain]!)
                    return metrics["hmx_active_connections"] == 0
                }
                #expect(ended, "\(domain) still has connections: \(metrics)\n\(lab.gatewayLogs)")
            }
            let closed = await eventually(within: 5) {
                source.output.components(separatedBy: "closed after").count - 1 == rounds
            }
            #expect(
                closed,
                "the source saw \(source.output.components(separatedBy: "closed after").count - 1) of \(rounds) ends"
            )
        }

        @Test("1000 concurrent connections each echo their own bytes", .timeLimit(.minutes(4)))
        func thousandConnections() async throws {
            let lab = try await GatewayLab()
            let target = lab.port(60)
            let importPort = lab.port(61)
            let server = try await lab.startToolServer(.beta, ["echo-server", "--port", "\(target)"])
            try await lab.startGateways(
                exports: [
                    .init(
                        name: "many",
                        port: 9005,
                        target: "tcp://127.0.0.1:\(target)",
                        extra: ["max_connections: 2000"]
                    )
                ],
                imports: [
                    .init(
                        name: "many",
                        listen: "tcp://127.0.0.1:\(importPort)",
                        port: 9005,
                        extra: ["max_connections: 2000"]
                    )
                ]
            )
            let client = try await lab.runTool(
                .alpha,
                ["many", "--port", "\(importPort)", "--count", "1000", "--bytes", "2000", "--timeout", "150"],
                seconds: 180
            )
            #expect(client.status == 0, "\(client.output)\n\(lab.gatewayLogs.suffix(4000))")
            #expect(client.output.hasPrefix("ok 1000 concurrent connections"), "\(client.output)")
            // Every connection reached the server in beta and was closed there.
            let closed = await eventually(within: 20) {
                server.output.components(separatedBy: "closed ").count - 1 >= 1000
            }
            #expect(closed, "server saw \(server.output.components(separatedBy: "closed ").count - 1) closes")
        }
    }
}
