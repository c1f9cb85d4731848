// SPDX-License-Identifier: Apache-2.0
import Yams

#if canImport(Glibc)
import Glibc
#endif

/// A YAML value with the file, line and key path it came from, so that every
/// validation failure can say exactly where it is.
public struct ConfigNode {
    public let node: Node
    public let file: String
    public let key: String

    /// The text's last line: libyaml marks the end of a text without a final line break
    /// (and an empty value there) on the line after it; errors there name the last line.
    let lastLine: Int

    public init(node: Node, file: String, key: String) {
        self.init(node: node, file: file, key: key, lastLine: .max)
    }

    init(node: Node, file: String, key: String, lastLine: Int) {
        self.node = node
        self.file = file
        self.key = key
        self.lastLine = lastLine
    }

    /// The 1-based line of this value.
    public var line: Int? { self.line(of: self.node) }

    /// The 1-based line of `node`, within the text.
    func line(of node: Node) -> Int? { node.mark.map { min($0.line, self.lastLine) } }

    /// Reads and parses a YAML file whose top level must be a mapping.
    /// - Parameter maximumBytes: refuse larger files (configs are small; a huge file is a mistake).
    public static func load(path: String, maximumBytes: Int = 4 << 20) throws(ConfigError) -> ConfigNode {
        let text = try readFile(path, maximumBytes: maximumBytes)
        return try self.parse(text, file: path)
    }

    /// An error about this value.
    public func error(_ reason: String) -> ConfigError {
        ConfigError(file: self.file, line: self.line, key: self.key, reason: reason)
    }

    // MARK: - Scalars

    public func string() throws(ConfigError) -> String {
        guard let scalar = self.node.scalar else { throw self.error("expected a string") }
        return scalar.string
    }

    /// An absolute path a Unix socket can be bound to (at most 107 bytes).
    public func socketPath() throws(ConfigError) -> String {
        let path = try self.string()
        guard path.hasPrefix("/"), path.utf8.count < 108 else {
            throw self.error("give an absolute path of at most 107 bytes (a Unix socket's limit)")
        }
        return path
    }

    public func bool() throws(ConfigError) -> Bool {
        guard let scalar = self.node.scalar, let value = Bool.construct(from: scalar) else {
            throw self.error("expected true or false")
        }
        return value
    }

    /// An integer within `range` (decimal, or hexadecimal with 0x).
    public func integer<T: FixedWidthInteger>(_ type: T.Type, in range: ClosedRange<T>) throws(ConfigError) -> T {
        guard let scalar = self.node.scalar else { throw self.error("expected an integer") }
        let text = scalar.string
        let value: T?
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            value = T(text.dropFirst(2), radix: 16)
        } else {
            value = T(text, radix: 10)
        }
        guard let value else { throw self.error("expected an integer, found '\(text)'") }
        guard range.contains(value) else {
            throw self.error("\(value) is out of range \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    // MARK: - Collections

    public func sequence() throws(ConfigError) -> [ConfigNode] {
        guard let sequence = self.node.sequence else { throw self.error("expected a list") }
        return sequence.enumerated().map { index, element in
            ConfigNode(node: element, file: self.file, key: "\(self.key)[\(index)]", lastLine: self.lastLine)
        }
    }

    /// The keys of a mapping, each once.
    ///
    /// Linear in the number of keys (a dictionary finds duplicates and answers lookups):
    /// configuration files may be generated, and a hostile or runaway one must not make
    /// loading (or a reload) take time quadratic in its size.
    public func mapping() throws(ConfigError) -> ConfigMapping {
        guard let mapping = self.node.mapping else { throw self.error("expected a mapping of keys") }
        var entries: [ConfigMapping.Entry] = []
        var index: [String: Int] = [:]
        entries.reserveCapacity(mapping.count)
        index.reserveCapacity(mapping.count)
        for (keyNode, value) in mapping {
            guard let name = keyNode.scalar?.string else {
                throw ConfigError(
                    file: self.file,
                    line: self.line(of: keyNode),
                    key: self.key,
                    reason: "keys must be strings"
                )
            }
            let path = self.key.isEmpty ? name : "\(self.key).\(name)"
            if let first = index[name] {
                throw ConfigError(
                    file: self.file,
                    line: self.line(of: keyNode),
                    key: path,
                    reason: "duplicate key\(entries[first].line.map { " (first at line \($0))" } ?? "")"
                )
            }
            index[name] = entries.count
            let node = ConfigNode(node: value, file: self.file, key: path, lastLine: self.lastLine)
            entries.append(ConfigMapping.Entry(name: name, node: node, line: self.line(of: keyNode)))
        }
        return ConfigMapping(owner: self, entries: entries, index: index)
    }
}

/// A mapping being read key by key; ``finish(known:)`` rejects keys nobody asked for.
public final class ConfigMapping {
    struct Entry {
        var name: String
        var node: ConfigNode
        /// The line of the key (its value may start on a later line).
        var line: Int?
    }

    public let owner: ConfigNode
    /// In file order.
    private let entries: [Entry]
    /// Position in `entries` of each key.
    private let index: [String: Int]
    /// Entries read, by position.
    private var used: [Bool]

    init(owner: ConfigNode, entries: [Entry], index: [String: Int]) {
        self.owner = owner
        self.entries = entries
        self.index = index
        self.used = Array(repeating: false, count: entries.count)
    }

    /// Every entry in file order (all count as read): for mappings whose keys are data.
    public func all() -> [(String, ConfigNode)] {
        self.used = Array(repeating: true, count: self.entries.count)
        return self.entries.map { ($0.name, $0.node) }
    }

    /// True if the key is present.
    public func has(_ name: String) -> Bool { self.index[name] != nil }

    public func optional(_ name: String) -> ConfigNode? {
        guard let position = self.index[name] else { return nil }
        self.used[position] = true
        return self.entries[position].node
    }

    public func required(_ name: String) throws(ConfigError) -> ConfigNode {
        guard let node = self.optional(name) else {
            let path = self.owner.key.isEmpty ? name : "\(self.owner.key).\(name)"
            throw ConfigError(
                file: self.owner.file,
                line: self.owner.line,
                key: path,
                reason: "required key is missing"
            )
        }
        return node
    }

    /// Fails on the first key that was never read.
    /// - Parameter known: the keys this mapping accepts, listed in the error.
    public func finish(known: [String]) throws(ConfigError) {
        guard let position = self.used.firstIndex(of: false) else { return }
        let entry = self.entries[position]
        throw ConfigError(
            file: entry.node.file,
            line: entry.line,
            key: entry.node.key,
            reason: "unknown key (expected one of: \(known.joined(separator: ", ")))"
        )
    }
}

func readFile(_ path: String, maximumBytes: Int) throws(ConfigError) -> String {
    guard let handle = fopen(path, "rb") else {
        throw ConfigError(file: path, line: nil, key: "", reason: "cannot open: \(String(cString: strerror(errno)))")
    }
    defer { fclose(handle) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = fread(&chunk, 1, chunk.count, handle)
        if count > 0 { bytes.append(contentsOf: chunk[0..<count]) }
        if bytes.count > maximumBytes {
            throw ConfigError(file: path, line: nil, key: "", reason: "file is larger than \(maximumBytes) bytes")
        }
        if count < chunk.count {
            if ferror(handle) != 0 {
                throw ConfigError(
                    file: path,
                    line: nil,
                    key: "",
                    reason: "read error: \(String(cString: strerror(errno)))"
                )
            }
            break
        }
    }
    guard let text = String(validating: bytes, as: UTF8.self) else {
        throw ConfigError(file: path, line: firstInvalidUTF8Line(bytes), key: "", reason: "not UTF-8 text")
    }
    return text
}

/// The 1-based line of the first byte that is not UTF-8, for the error to point at it.
func firstInvalidUTF8Line(_ bytes: [UInt8]) -> Int {
    var parser = Unicode.UTF8.ForwardParser()
    var iterator = bytes.makeIterator()
    var line = 1
    while true {
        switch parser.parseScalar(from: &iterator) {
        case .valid(let scalar):
            if scalar.count == 1, scalar.first == UInt8(ascii: "\n") { line += 1 }
        case .error, .emptyInput:
            return line
        }
    }
}
