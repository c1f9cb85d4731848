// SPDX-License-Identifier: Apache-2.0

/// A configuration error: where it is (file, line, key) and why, in one line.
public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public var file: String
    /// 1-based line, or `nil` when the error is not tied to a line (e.g. unreadable file).
    public var line: Int?
    /// The dotted path of the offending key, e.g. `domains[1].socket`.
    public var key: String
    public var reason: String

    public init(file: String, line: Int?, key: String, reason: String) {
        self.file = file
        self.line = line
        self.key = key
        self.reason = reason
    }

    public var description: String {
        let place = self.line.map { "\(self.file):\($0)" } ?? self.file
        return self.key.isEmpty ? "\(place): \(self.reason)" : "\(place): \(self.key): \(self.reason)"
    }
}
