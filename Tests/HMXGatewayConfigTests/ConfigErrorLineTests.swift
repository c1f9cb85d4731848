// SPDX-License-Identifier: Apache-2.0
import Foundation
import HMXConfig
import HMXEmulator
import HMXGateway
import Testing

/// Every configuration error of both tools is one line `FILE:LINE: KEY: REASON` (or
/// `FILE:LINE: REASON` when no key is involved), also for what the YAML parser itself
/// refuses: repeated keys (once reported as Yams' "expected all keys to be unique...
/// 'name'", without a line), characters YAML does not allow, empty files, bytes that
/// are not UTF-8.
@Suite("Configuration errors have a line")
struct ConfigErrorLineTests {
    enum Tool: String, CaseIterable, Sendable {
        case gateway = "gw.yaml"
        case emulator = "emu.yaml"

        func error(_ text: String) -> ConfigError? {
            do {
                switch self {
                case .gateway: _ = try GatewayConfig.parse(text, file: self.rawValue)
                case .emulator: _ = try EmulatorConfig.parse(text, file: self.rawValue)
                }
                return nil
            } catch {
                return error
            }
        }

        func loadError(_ path: String) -> ConfigError? {
            do {
                switch self {
                case .gateway: _ = try GatewayConfig.load(path: path)
                case .emulator: _ = try EmulatorConfig.load(path: path)
                }
                return nil
            } catch {
                return error
            }
        }

        /// A valid first section of this tool's file.
        var start: String {
            switch self {
            case .gateway: "link: {emulator: /a}\n"
            case .emulator: "domains: [{id: 1, name: a, socket: /a}]\n"
            }
        }
    }

    @Test("repeated keys: the line of the repetition, the key's path, where it first was")
    func duplicateKeys() {
        let cases: [(Tool, String, String)] = [
            (.gateway, "link: {emulator: /a}\nlink: {xen: true}\n", "gw.yaml:2: link: duplicate key (first at line 1)"),
            (
                .gateway,
                "link: {emulator: /a}\nexports:\n  - name: a\n    port: 1\n    name: b\n",
                "gw.yaml:5: exports[0].name: duplicate key (first at line 3)"
            ),
            (
                .gateway, "link: {emulator: /a}\npeers: {a: 1, b: 2, a: 3}\n",
                "gw.yaml:2: peers.a: duplicate key (first at line 2)"
            ),
            // Unquoted and quoted: the same key (plain scalars are strings here).
            (
                .gateway, "link: {emulator: /a}\npeers:\n  7: 1\n  \"7\": 2\n",
                "gw.yaml:4: peers.7: duplicate key (first at line 3)"
            ),
            (
                .emulator,
                "domains:\n  - {id: 1, name: a, socket: /a}\n  - {id: 2, name: b,\n     socket: /b, name: c}\n",
                "emu.yaml:4: domains[1].name: duplicate key (first at line 3)"
            ),
            (
                .emulator,
                "mac_permissive: true\ndomains: [{id: 1, name: a, socket: /a}]\nmac_permissive: false\n",
                "emu.yaml:3: mac_permissive: duplicate key (first at line 1)"
            ),
            (
                .emulator,
                "domains: [{id: 1, name: a, socket: /a}]\npolicy:\n  - {action: allow}\n  - {action: allow, port: 1, 'port': 2}\n",
                "emu.yaml:4: policy[1].port: duplicate key (first at line 4)"
            ),
        ]
        for (tool, text, expected) in cases {
            #expect(tool.error(text)?.description == expected, "\(text)")
        }
    }

    @Test("keys that are not strings are refused with their line and path", arguments: Tool.allCases)
    func keysThatAreNotStrings(_ tool: Tool) {
        let file = tool.rawValue
        #expect(
            tool.error(tool.start + "? [x]\n: 1\n? [x]\n: 2\n")?.description
                == "\(file):2: a key must be a string, not a list"
        )
        #expect(
            tool.error(tool.start + "peers:\n  a: 1\n  {b: 2}: 3\n")?.description
                == "\(file):4: peers: a key must be a string, not a mapping"
        )
        #expect(
            tool.error(tool.start + "x: &k name\nlist:\n  - *k : 1\n")?.description
                == "\(file):4: list[0]: a key must be a string, not an alias"
        )
    }

    @Test("nesting deeper than any configuration is refused at its line", arguments: Tool.allCases)
    func deepNesting(_ tool: Tool) {
        let deep = String(repeating: "[", count: 40) + String(repeating: "]", count: 40)
        let error = tool.error(tool.start + "x: \(deep)\n")
        #expect(error?.line == 2)
        #expect(error?.key == "x" + String(repeating: "[0]", count: 31))
        #expect(error?.reason == "nested more than 32 levels deep")
    }

    /// Nested explicit complex keys (the config fuzzer found these) made the YAML
    /// library compare whole key trees: over a minute for 2 KiB. Refused before.
    @Test("nested complex keys are refused at once", arguments: Tool.allCases)
    func nestedComplexKeys(_ tool: Tool) {
        var text = ""
        for _ in 0..<40 { text += "?   ?  - ? ?  - ?   ?  - ?    ? -  ? ?    ? -  ?   ? -  ? ?    ? - \r" }
        let clock = ContinuousClock()
        let started = clock.now
        let error = tool.error(text)
        #expect(error?.line == 1)
        #expect(error?.reason.hasPrefix("a key must be a string") == true)
        #expect(clock.now - started < .seconds(10))
    }

    @Test("what YAML refuses, an empty file, bytes that are not UTF-8", arguments: Tool.allCases)
    func parserErrors(_ tool: Tool) throws {
        let file = tool.rawValue
        #expect(
            tool.error(tool.start + "x: \u{1}\n")?.description
                == "\(file):2: not valid YAML: control characters are not allowed"
        )
        #expect(tool.error(tool.start + "a: 1\r\n\r\nx: \u{7}\n")?.line == 4)
        // Unterminated at the end of a last line without a line break: that line.
        #expect(tool.error(tool.start + "x: {a: 'b")?.line == 2)
        #expect(tool.error("")?.description == "\(file):1: the file is empty")
        #expect(tool.error("# nothing\n")?.description == "\(file):1: the file is empty")
        let path = NSTemporaryDirectory() + "hmx-config-\(UUID().uuidString.prefix(8)).yaml"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(Array(tool.start.utf8) + [0x23, 0x0A, 0x78, 0x3A, 0x20, 0xFF, 0x0A]).write(
            to: URL(fileURLWithPath: path)
        )
        #expect(tool.loadError(path)?.description == "\(path):3: not UTF-8 text")
    }
}
