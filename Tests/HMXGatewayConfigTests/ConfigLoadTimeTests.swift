// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXConfig
import HMXEmulator
import HMXGateway
import Testing

/// Configuration loading takes time linear in the file's size: a benchmark-style test
/// that loads 25,000, 50,000 and 100,000 keys for both tools, prints the times and
/// checks the growth. Loading once took time quadratic in the number of keys (5,000
/// top-level keys 1.5 s, 20,000 keys 22 s: a file near the 4 MiB limit would have
/// taken hours), so a hostile or generated file could stall a reload.
@Suite("Configuration load time", .serialized)
struct ConfigLoadTimeTests {
    /// Keys in each file: 4 times the keys should take about 4 times as long (16 times
    /// when quadratic); twice that leaves room for a noisy, shared machine.
    /// `HMX_CONFIG_LOAD_KEYS` (comma-separated, ascending) measures other sizes.
    static let sizes: [Int] =
        ProcessInfo.processInfo.environment["HMX_CONFIG_LOAD_KEYS"].map {
            $0.split(separator: ",").compactMap { Int($0) }
        } ?? [25_000, 50_000, 100_000]
    /// Generous: the debug build on a loaded machine loads 100,000 keys in a few seconds.
    static let largestSeconds = 60.0

    /// One shape of file, as text for `keys` keys, and how to load it.
    struct Shape: Sendable, CustomStringConvertible {
        var description: String
        var text: @Sendable (Int) -> String
        var load: @Sendable (String) -> Void
    }

    static let shapes: [Shape] = [
        Shape(
            description: "hmx-gateway, top-level keys (refused: unknown key)",
            text: { keys in "link: {emulator: /a}\n" + (1..<keys).map { "k\($0): \($0)\n" }.joined() },
            load: { text in _ = try? GatewayConfig.parse(text, file: "gw.yaml") }
        ),
        Shape(
            description: "hmx-gateway, exports of 4 keys each (valid)",
            text: { keys in
                "link: {emulator: /a}\nexports:\n"
                    + (0..<keys / 4).map {
                        "  - {name: e\($0), port: \($0), target: \"tcp://127.0.0.1:1\", allow: [any]}\n"
                    }.joined()
            },
            load: { text in _ = try! GatewayConfig.parse(text, file: "gw.yaml") }
        ),
        Shape(
            description: "hmx-emulator, top-level keys (refused: unknown key)",
            text: { keys in "domains: [{id: 1, name: a, socket: /a}]\n" + (1..<keys).map { "k\($0): \($0)\n" }.joined()
            },
            load: { text in _ = try? EmulatorConfig.parse(text, file: "emu.yaml") }
        ),
        Shape(
            description: "hmx-emulator, domains of 3 keys (3/8 of the keys) and policy rules of 4 naming them (valid)",
            text: { keys in
                let domains = keys / 8
                return "domains:\n" + (1...domains).map { "  - {id: \($0), name: d\($0), socket: /s\($0)}\n" }.joined()
                    + "policy:\n"
                    + (0..<(keys - 3 * domains) / 4).map {
                        "  - {action: allow, from: d\($0 % domains + 1), to: \(($0 * 7) % domains + 1), port: \($0)}\n"
                    }
                    .joined()
            },
            load: { text in _ = try! EmulatorConfig.parse(text, file: "emu.yaml") }
        ),
    ]

    /// CPU time this thread has used (not affected by other threads and processes).
    static func threadCPUSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    @Test("100,000 keys load within the bound; time grows linearly", arguments: Self.shapes)
    func linear(_ shape: Shape) throws {
        var seconds: [Double] = []
        for keys in Self.sizes {
            let text = shape.text(keys)
            // The best of three runs, in CPU time of this thread: the machine is shared,
            // also with the other tests running meanwhile.
            let best = (0..<3).map { _ in
                let start = Self.threadCPUSeconds()
                shape.load(text)
                return Self.threadCPUSeconds() - start
            }.min()!
            seconds.append(best)
        }
        let figures = zip(Self.sizes, seconds).map { "\($0) keys \(String(format: "%.3f", $1)) s" }
        let keysGrowth = Double(Self.sizes.last!) / Double(Self.sizes.first!)
        let growth = seconds.last! / max(seconds.first!, 1e-6)
        print(
            "config load time, \(shape): \(figures.joined(separator: ", ")); "
                + "\(String(format: "%.0f", keysGrowth))x the keys: \(String(format: "%.1f", growth))x the time"
        )
        #expect(seconds.last! < Self.largestSeconds, "\(figures)")
        #expect(growth < 2 * keysGrowth, "\(figures)")
    }
}
