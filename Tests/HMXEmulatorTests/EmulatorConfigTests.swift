// SPDX-License-Identifier: Apache-2.0
import HMXConfig
import HMXCore
import HMXEmulator
import Testing

@Suite("Emulator configuration")
struct EmulatorConfigTests {
    func error(_ text: String) -> ConfigError? {
        do {
            _ = try EmulatorConfig.parse(text, file: "emu.yaml")
            return nil
        } catch {
            return error
        }
    }

    @Test func validConfig() throws {
        let config = try EmulatorConfig.parse(
            """
            mac_permissive: true
            max_memory_mib: 64
            domains:
              - {id: 0, name: dom0, socket: /run/hmx/dom0.sock, uid: 0}
              - {id: 7, name: web, socket: /run/hmx/web.sock, max_memory_mib: 8}
            policy:
              - {action: allow, from: web, to: dom0, port: 5432}
              - {action: deny, from: any, to: 7, port: 1000-2000}
            """,
            file: "emu.yaml"
        )
        #expect(config.wildcardRingsAllowed)
        #expect(config.domains.map(\.id) == [DomainID(0), DomainID(7)])
        #expect(config.domains[0].uid == 0)
        #expect(config.domains[0].maximumMemory == 64 << 20)
        #expect(config.domains[1].maximumMemory == 8 << 20)
        #expect(config.policy.allows(source: DomainID(7), destination: DomainID(0), port: 5432))
        #expect(!config.policy.allows(source: DomainID(7), destination: DomainID(0), port: 5433))
        #expect(!config.policy.allows(source: DomainID(0), destination: DomainID(7), port: 1500))
        #expect(!config.policy.allows(source: DomainID(0), destination: DomainID(7), port: 3000))
    }

    @Test("every error names the file, the line, the key and the reason")
    func errors() {
        let cases: [(String, String)] = [
            ("domains: []\nbogus: 1\n", "emu.yaml:1: domains: at least one domain is needed"),
            ("domains:\n  - {id: 1, name: a, socket: /a}\nbogus: 1\n", "emu.yaml:3: bogus: unknown key"),
            ("domains:\n  - {id: 1, name: a, socket: /a, colour: red}\n", "emu.yaml:2: domains[0].colour: unknown key"),
            ("domains:\n  - {id: 1, socket: /a}\n", "emu.yaml:2: domains[0].name: required key is missing"),
            (
                "domains:\n  - {id: 40000, name: a, socket: /a}\n",
                "emu.yaml:2: domains[0].id: 40000 is out of range 0...32751"
            ),
            (
                "domains:\n  - {id: x, name: a, socket: /a}\n",
                "emu.yaml:2: domains[0].id: expected an integer, found 'x'"
            ),
            (
                "domains:\n  - {id: 1, name: a, socket: /a}\n  - {id: 1, name: b, socket: /b}\n",
                "emu.yaml:3: domains[1].id: domain id 1 is used twice"
            ),
            (
                "domains:\n  - {id: 1, name: a, socket: /a}\npolicy:\n  - {action: allow, to: nobody}\n",
                "emu.yaml:4: policy[0].to: unknown domain 'nobody' (not in domains)"
            ),
            (
                "domains:\n  - {id: 1, name: a, socket: /a}\npolicy:\n  - {action: maybe}\n",
                "emu.yaml:4: policy[0].action: expected allow or deny"
            ),
            (
                "domains:\n  - {id: 1, name: a, socket: /a}\npolicy:\n  - {action: allow, port: 9-3}\n",
                "emu.yaml:4: policy[0].port: expected a port, a range LOW-HIGH, or any; found '9-3'"
            ),
            (
                "mac_permissive: sometimes\ndomains:\n  - {id: 1, name: a, socket: /a}\n",
                "emu.yaml:1: mac_permissive: expected true or false"
            ),
            ("domains: [\n", "emu.yaml:2: not valid YAML"),
            ("- just\n- a list\n", "emu.yaml:1: the top level must be a mapping of keys"),
        ]
        for (text, expected) in cases {
            let error = self.error(text)
            #expect(error != nil, "accepted: \(text)")
            #expect(
                error?.description.hasPrefix(expected) == true,
                "\(error?.description ?? "nil") does not start with \(expected)"
            )
        }
    }

    @Test func unreadableFile() {
        #expect(throws: ConfigError.self) { try EmulatorConfig.load(path: "/nonexistent/emu.yaml") }
        do {
            _ = try EmulatorConfig.load(path: "/nonexistent/emu.yaml")
        } catch {
            #expect(error.description == "/nonexistent/emu.yaml: cannot open: No such file or directory")
        }
    }
}

@Suite("Shipped emulator configuration files")
struct ShippedEmulatorConfigTests {
    @Test(arguments: ["emulator.yaml", "demo-emulator.yaml"])
    func validates(_ name: String) throws {
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        let config = try EmulatorConfig.load(path: parts.joined(separator: "/") + "/Configs/\(name)")
        #expect(config.domains.count >= 2)
        #expect(!config.policy.rules.isEmpty)
    }
}
