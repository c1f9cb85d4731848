// SPDX-License-Identifier: Apache-2.0
import FuzzSupport
import HMXConfig
import HMXEmulator
import HMXGateway

/// Fuzzes both tools' configuration loaders (YAML through Yams and libyaml, once, then
/// each tool's validation) with arbitrary text: every input must end in a configuration or
/// in a ``ConfigError`` that names the file and a line within the text (the loaders
/// throw nothing else: their errors are typed), never in a crash, a hang or a leak.
/// Inputs that are not UTF-8 are read with replacement characters, as the loaders
/// only ever see text (a file that is not UTF-8 is refused before parsing).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    // Lines as libyaml counts them (LF, CR, CR LF, NEL, LS, PS); the last one is where
    // the text ends, after its last line break.
    let lines = ConfigNode.lastLine(of: text)
    func check(_ error: ConfigError) {
        guard let line = error.line else { preconditionFailure("no line: \(error)") }
        precondition((1...lines).contains(line), "line \(line) of \(lines): \(error)")
        // Compared as bytes: a combining character at the start of a key would join the
        // prefix's last space in one grapheme, and String.hasPrefix compares graphemes.
        let prefix = "fuzz.yaml:\(line): "
        precondition(error.file == "fuzz.yaml" && error.description.utf8.starts(with: prefix.utf8), "\(error)")
    }
    // Both tools read YAML the same way (ConfigNode): parse once, then decode as each.
    let root: ConfigNode
    do {
        root = try ConfigNode.parse(text, file: "fuzz.yaml")
    } catch {
        check(error)
        return 0
    }
    do {
        let config = try GatewayConfig.decode(root)
        precondition(config.file == "fuzz.yaml" && config.effectiveWindowMax >= config.window)
        _ = config.partnerDomains
    } catch {
        check(error)
    }
    do {
        let config = try EmulatorConfig.decode(root)
        precondition(!config.domains.isEmpty)
        _ = config.settings
    } catch {
        check(error)
    }
    return 0
}

@_cdecl("FuzzConfig_main")
func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzzConfig)
}
