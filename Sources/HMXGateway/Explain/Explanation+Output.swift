// SPDX-License-Identifier: Apache-2.0
import HMXControl
import HMXStream

// What `hmx-gateway explain` prints: lines for people, JSON for pipelines.
extension Explanation {
    /// One line per mapping, then one per finding, then a count.
    public var textLines: [String] {
        var lines = ["mappings:"]
        if self.mappings.isEmpty { lines.append("  (no imports in these gateways)") }
        for mapping in self.mappings {
            let head =
                "\(mapping.importer) import \(mapping.importName) \(mapping.listen) -> \(mapping.peer) port \(mapping.port)"
            if let failure = mapping.failure {
                let outcome = failure.outcome.map { " [\($0.rawValue)]" } ?? ""
                lines.append("  FAILS  \(head): \(failure.layer.rawValue): \(failure.reason)\(outcome)")
            } else {
                lines.append("  works  \(head) = export \(mapping.export ?? "?") -> \(mapping.target ?? "?")")
            }
        }
        lines.append("findings:")
        if self.findings.isEmpty { lines.append("  (none: every layer says the same)") }
        for finding in self.findings {
            lines.append("  \(finding.severity.rawValue.padding(7))  \(finding.kind.rawValue): \(finding.message)")
        }
        let failing = self.mappings.filter { !$0.works }.count
        let errors = self.findings.filter { $0.severity == .error }.count
        let warnings = self.findings.count - errors
        lines.append(
            "\(self.mappings.count) mapping(s): \(self.mappings.count - failing) work, \(failing) fail; "
                + "\(errors) error(s), \(warnings) warning(s)"
        )
        return lines
    }

    /// The same as one JSON object: `fits`, `mappings` and `findings`.
    public var json: String {
        let mappings = self.mappings.map { mapping -> String in
            var fields = [
                ("importer", JSON.string(mapping.importer)),
                ("import", JSON.string(mapping.importName)),
                ("listen", JSON.string(mapping.listen)),
                ("peer", JSON.string(mapping.peer)),
                ("port", "\(mapping.port)"),
                ("export", mapping.export.map(JSON.string) ?? "null"),
                ("target", mapping.target.map(JSON.string) ?? "null"),
                ("works", "\(mapping.works)"),
            ]
            if let failure = mapping.failure {
                fields += [
                    ("layer", JSON.string(failure.layer.rawValue)),
                    ("outcome", failure.outcome.map { JSON.string($0.rawValue) } ?? "null"),
                    ("reason", JSON.string(failure.reason)),
                ]
            }
            return JSON.object(fields)
        }
        let findings = self.findings.map { finding in
            JSON.object([
                ("kind", JSON.string(finding.kind.rawValue)),
                ("severity", JSON.string(finding.severity.rawValue)),
                ("message", JSON.string(finding.message)),
            ])
        }
        return JSON.object([
            ("fits", "\(self.fits)"),
            ("mappings", "[" + mappings.joined(separator: ",") + "]"),
            ("findings", "[" + findings.joined(separator: ",") + "]"),
        ])
    }
}

extension String {
    fileprivate func padding(_ width: Int) -> String {
        self.count >= width ? self : self + String(repeating: " ", count: width - self.count)
    }
}
