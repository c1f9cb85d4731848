// SPDX-License-Identifier: Apache-2.0
import Yams

/// Parsing: every error, also those of the YAML parser, names its line.
extension ConfigNode {
    /// How plain scalars get their tags: not at all (every plain scalar is a string).
    /// The loaders read every value from its text (`0x10`, `5s`, `yes`), so YAML 1.1's
    /// implicit types (found by regular expressions for every key, as Yams compares
    /// keys by their resolved tag) would only cost time; and a key `7` then repeats
    /// a key `"7"`, as it does for the loaders.
    static let resolver = Resolver.basic

    /// Parses YAML text; `file` names it in errors.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> ConfigNode {
        if let problem = YAMLShapeCheck.firstProblem(in: text) {
            throw ConfigError(file: file, line: problem.line, key: problem.key, reason: problem.reason)
        }
        let node: Node?
        do {
            node = try Yams.compose(yaml: text, Self.resolver)
        } catch let error as YamlError {
            var described = Self.describe(error, text: text, file: file)
            described.line = described.line.map { min($0, Self.lastLine(of: text)) }
            throw described
        } catch {
            throw ConfigError(file: file, line: nil, key: "", reason: "not valid YAML: \(error)")
        }
        guard let node else {
            throw ConfigError(file: file, line: 1, key: "", reason: "the file is empty")
        }
        let root = ConfigNode(node: node, file: file, key: "", lastLine: Self.lastLine(of: text))
        guard node.mapping != nil else { throw root.error("the top level must be a mapping of keys") }
        return root
    }

    /// Every YAML error with its line: Yams' marks are 1-based lines; a reader error
    /// (a character YAML does not allow) gives a byte offset. (Keys that are not
    /// strings and repeated keys were refused before, by ``YAMLShapeCheck``.)
    private static func describe(_ error: YamlError, text: String, file: String) -> ConfigError {
        switch error {
        case .reader(let problem, let offset, _, _):
            let line = offset.map { Self.line(atByteOffset: $0, in: text) }
            return ConfigError(file: file, line: line, key: "", reason: "not valid YAML: \(problem)")
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _):
            let what = context.map { "\($0.text) " } ?? ""
            return ConfigError(file: file, line: mark.line, key: "", reason: "not valid YAML: \(what)\(problem)")
        case .composer(let context, let problem, let mark, _):
            let what = context.map { "\($0.text) " } ?? ""
            return ConfigError(file: file, line: mark.line, key: "", reason: "not valid YAML: \(what)\(problem)")
        default:
            return ConfigError(file: file, line: nil, key: "", reason: "not valid YAML: \(error)")
        }
    }

    /// The text's last line: the line after its last line break, where its end is (1
    /// for an empty text). At the end of a text without a final line break, libyaml
    /// marks the end (and an empty value there) on the line after the last one, which
    /// the text does not have.
    public static func lastLine(of text: String) -> Int {
        Self.line(atByteOffset: text.utf8.count, in: text)
    }

    /// The 1-based line of a byte offset in `text`, counting line breaks as libyaml
    /// does for its marks: LF, CR, CR LF, NEL (U+0085), LS (U+2028) and PS (U+2029).
    public static func line(atByteOffset offset: Int, in text: String) -> Int {
        var line = 1
        var previous: (UInt8, UInt8) = (0, 0)
        for byte in text.utf8.prefix(offset) {
            switch (previous.0, previous.1, byte) {
            case (_, _, 0x0D): line += 1
            case (_, let last, 0x0A) where last != 0x0D: line += 1
            case (_, 0xC2, 0x85), (0xE2, 0x80, 0xA8), (0xE2, 0x80, 0xA9): line += 1
            default: break
            }
            previous = (previous.1, byte)
        }
        return line
    }
}
