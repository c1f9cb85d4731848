// SPDX-License-Identifier: Apache-2.0
import ArgumentParser
import HMXCommandLine
import HMXConfig
import HMXCore
import HMXEmulator
import HMXGateway

#if canImport(Glibc)
import Glibc
#endif

struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every mapping of a host's gateways against each other and the hypervisor's policy.",
        discussion: """
            Prints one line per import (whether it will work and, if not, which layer \
            stops it and why), then the findings across layers. Exit status: 0 when \
            everything fits, 1 when a mapping cannot work, 2 when a file cannot be read.
            On the emulator, each gateway's domain is the one whose socket its link names. \
            On Xen, name each file's domain as DOMAIN=FILE, or name the file after its \
            domain (web.yaml is domain web).
            """
    )

    @Option(help: "hmx-emulator's configuration (its domains, policy and settings).")
    var emulator: String?

    @Flag(help: "The gateways run on Xen.")
    var xen = false

    @Option(help: "Xen's Argo boot option, e.g. argo=1,mac-permissive=1 (Xen's default: Argo off).")
    var xenBootOption = "argo=0"

    @Option(help: "Xen: a YAML file of the domains' names and ids (NAME: ID), or xenstore (in dom0).")
    var domains: String?

    @Flag(help: "Print JSON instead of lines.")
    var json = false

    @Argument(help: "Gateway configuration files or directories of them (*.yaml, *.yml); on Xen, DOMAIN=FILE.")
    var configs: [String]

    func validate() throws {
        if (self.emulator == nil) == !self.xen {
            throw ValidationError("give either --emulator FILE or --xen")
        }
        if self.xen, self.domains == nil {
            throw ValidationError("--xen needs --domains FILE (NAME: ID for every domain) or --domains xenstore")
        }
    }

    func run() throws {
        let deployment: Deployment
        do {
            deployment = try self.load()
        } catch {
            printError("hmx-gateway: \(error)")
            throw ExitCode(2)
        }
        let explanation = DeploymentExplainer(deployment).explain()
        if self.json {
            print(explanation.json)
        } else {
            for line in explanation.textLines { print(line) }
        }
        if !explanation.fits { throw ExitCode(1) }
    }

    private func load() throws(ConfigError) -> Deployment {
        if let emulatorPath = self.emulator {
            let emulator = try EmulatorConfig.load(path: emulatorPath)
            var configs: [GatewayConfig] = []
            for (_, path) in try Self.files(self.configs, skipping: emulatorPath) {
                configs.append(try GatewayConfig.load(path: path))
            }
            return Deployment.onEmulator(emulator, gateways: configs)
        }
        let (argo, wildcard) = try Self.parseBootOption(self.xenBootOption)
        let domains = try Self.loadDomains(self.domains!)
        var gateways: [Deployment.Gateway] = []
        var unplaced: [(config: GatewayConfig, reason: String)] = []
        for (name, path) in try Self.files(self.configs, skipping: self.domains!) {
            let config = try GatewayConfig.load(path: path)
            if let domain = domains.first(where: { $0.name == name || "\($0.id)" == name }) {
                gateways.append(.init(config: config, domain: domain.id))
            } else {
                unplaced.append((config, "no domain \"\(name)\" in \(self.domains!) (name the file DOMAIN=FILE)"))
            }
        }
        let hypervisor = Deployment.Hypervisor(
            kind: .xen,
            argoEnabled: argo,
            wildcardRingsAllowed: argo && wildcard,
            domains: domains,
            policy: nil
        )
        return Deployment(gateways: gateways, hypervisor: hypervisor, unplaced: unplaced)
    }

    /// `argo=1,mac-permissive=1` as Xen reads it (booleans: 1/0, true/false, yes/no, on/off).
    static func parseBootOption(_ text: String) throws(ConfigError) -> (argo: Bool, wildcard: Bool) {
        func error(_ reason: String) -> ConfigError {
            ConfigError(file: "--xen-boot-option", line: nil, key: text, reason: reason)
        }
        func bool(_ value: Substring) -> Bool? {
            switch value.lowercased() {
            case "1", "true", "yes", "on", "enable": true
            case "0", "false", "no", "off", "disable": false
            default: nil
            }
        }
        var argo = false
        var wildcard = false
        for item in text.split(separator: ",") {
            let parts = item.split(separator: "=", maxSplits: 1)
            let key = parts[0]
            let value = parts.count == 2 ? parts[1] : "1"
            guard let flag = bool(value) else { throw error("\(item): not a boolean") }
            switch key {
            case "argo": argo = flag
            case "mac-permissive": wildcard = flag
            default: throw error("\(item): expected argo=BOOL and mac-permissive=BOOL")
            }
        }
        return (argo, wildcard)
    }

    /// A YAML mapping of domain names to ids, or `xenstore`: the running domains as
    /// dom0's xenstore lists them (`xenstore-list /local/domain`, each one's `name`).
    static func loadDomains(_ path: String) throws(ConfigError) -> [Deployment.Domain] {
        if path == "xenstore" { return try Self.xenstoreDomains() }
        let root = try ConfigNode.load(path: path)
        var domains: [Deployment.Domain] = []
        for (key, value) in try root.mapping().all() {
            let id = try value.integer(UInt16.self, in: 0...0x7FEF)
            domains.append(.init(id: DomainID(id), name: key))
        }
        return domains
    }

    static func xenstoreDomains() throws(ConfigError) -> [Deployment.Domain] {
        var domains: [Deployment.Domain] = []
        for word in try Self.output(of: "xenstore-list /local/domain").split(whereSeparator: \.isWhitespace) {
            guard let id = UInt16(word), id < 0x7FF0 else {
                throw ConfigError(
                    file: "xenstore",
                    line: nil,
                    key: "/local/domain",
                    reason: "\(word) is not a domain id"
                )
            }
            let read = try Self.output(of: "xenstore-read /local/domain/\(id)/name")
            let name = read.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
            domains.append(.init(id: DomainID(id), name: name.isEmpty ? "\(id)" : name))
        }
        return domains
    }

    /// The standard output of a shell command (at most 1 MiB); fails unless it exits 0.
    private static func output(of command: String) throws(ConfigError) -> String {
        guard let stream = popen(command, "r") else {
            throw ConfigError(file: "xenstore", line: nil, key: command, reason: "cannot run it")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let count = fread(&chunk, 1, chunk.count, stream)
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        let status = pclose(stream)
        guard status == 0 else {
            throw ConfigError(file: "xenstore", line: nil, key: command, reason: "failed (wait status \(status))")
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The files named: files as given (`DOMAIN=FILE` names the domain, else the file's
    /// name without its extension), directories by their *.yaml and *.yml files.
    static func files(_ arguments: [String], skipping skipped: String) throws(ConfigError) -> [(String, String)] {
        var files: [(String, String)] = []
        for argument in arguments {
            if let equals = argument.firstIndex(of: "="), !argument[..<equals].contains("/") {
                files.append((String(argument[..<equals]), String(argument[argument.index(after: equals)...])))
                continue
            }
            var info = stat()
            guard stat(argument, &info) == 0 else {
                throw ConfigError(
                    file: argument,
                    line: nil,
                    key: "",
                    reason: "cannot read: \(String(cString: strerror(errno)))"
                )
            }
            if info.st_mode & S_IFMT == S_IFDIR {
                guard let directory = opendir(argument) else {
                    throw ConfigError(
                        file: argument,
                        line: nil,
                        key: "",
                        reason: "cannot list: \(String(cString: strerror(errno)))"
                    )
                }
                var names: [String] = []
                while let entry = readdir(directory) {
                    let name = withUnsafeBytes(of: entry.pointee.d_name) {
                        String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
                    }
                    if name.hasSuffix(".yaml") || name.hasSuffix(".yml") { names.append(name) }
                }
                closedir(directory)
                for name in names.sorted() {
                    let path = argument.hasSuffix("/") ? argument + name : argument + "/" + name
                    if Self.sameFile(path, skipped) { continue }
                    files.append((Self.stem(name), path))
                }
            } else {
                files.append((Self.stem(argument), argument))
            }
        }
        return files
    }

    private static func stem(_ path: String) -> String {
        let name = path.split(separator: "/").last.map(String.init) ?? path
        return name.split(separator: ".", maxSplits: 1).first.map(String.init) ?? name
    }

    private static func sameFile(_ first: String, _ second: String) -> Bool {
        var a = stat()
        var b = stat()
        guard stat(first, &a) == 0, stat(second, &b) == 0 else { return false }
        return a.st_dev == b.st_dev && a.st_ino == b.st_ino
    }
}
