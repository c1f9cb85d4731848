// SPDX-License-Identifier: Apache-2.0
import CYaml
import Yams

/// Checks a YAML text's shape before Yams builds its tree: every key is a string, no
/// key is repeated, nesting is bounded.
///
/// Configuration keys are strings. A key that is a list, a mapping or an alias is
/// refused here, in one pass over libyaml's events (the parser under Yams), linear in
/// the text, with an explicit stack and no tree: Yams compares the keys of each mapping
/// while it builds it, and compares whole key trees when keys are collections, which
/// nested complex keys turn into minutes for a few kilobytes. A repeated key is found
/// here too, so its error names its path and the line of the repetition (Yams names
/// only the key and where it *first* appears).
///
/// Keys are compared as Yams compares them (value and tag, resolved as
/// ``ConfigNode/resolver`` does), so what passes here Yams accepts. Text libyaml
/// refuses passes unchecked, and Yams then reports the same error with its line.
enum YAMLShapeCheck {
    /// Deeper nesting than any configuration has (a handful of levels) is refused.
    static let maximumDepth = 32

    struct Problem: Equatable {
        /// The dotted path of the key concerned, as ``ConfigNode`` names keys.
        var key: String
        /// 1-based line.
        var line: Int
        var reason: String
    }

    /// Where a node is in its parent.
    private enum Step {
        case root
        case key(String)
        case index(Int)
    }

    /// A scalar key as Yams compares keys: its text and its resolved tag.
    private struct Key: Hashable {
        var text: String
        var tag: String
    }

    /// One open collection: where it is in its parent, and (for a mapping) its keys so
    /// far, and the key whose value comes next (`nil` while a key is expected). Paths
    /// are built from these steps only for an error.
    private struct Collection {
        var step: Step
        var isMapping: Bool
        var count = 0
        var keys: [Key: Int] = [:]
        var pendingKey: String?
    }

    static func firstProblem(in text: String) -> Problem? {
        var text = text
        return text.withUTF8 { bytes in Self.firstProblem(in: bytes) }
    }

    private static func firstProblem(in bytes: UnsafeBufferPointer<UInt8>) -> Problem? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return nil }
        defer { yaml_parser_delete(&parser) }
        yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
        yaml_parser_set_input_string(&parser, bytes.baseAddress, bytes.count)
        var stack: [Collection] = []
        var event = yaml_event_t()
        while yaml_parser_parse(&parser, &event) == 1 {
            defer { yaml_event_delete(&event) }
            let line = Int(event.start_mark.line) + 1
            switch event.type {
            case YAML_SCALAR_EVENT, YAML_ALIAS_EVENT, YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                let (step, problem) = Self.place(event, in: &stack, line: line)
                if let problem { return problem }
                if event.type == YAML_SEQUENCE_START_EVENT || event.type == YAML_MAPPING_START_EVENT {
                    guard stack.count < Self.maximumDepth else {
                        return Problem(
                            key: Self.path(stack, step),
                            line: line,
                            reason: "nested more than \(Self.maximumDepth) levels deep"
                        )
                    }
                    stack.append(Collection(step: step, isMapping: event.type == YAML_MAPPING_START_EVENT))
                }
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                // Its parent moved on when the collection started.
                _ = stack.popLast()
            case YAML_STREAM_END_EVENT:
                return nil
            default:
                break
            }
        }
        return nil
    }

    /// Places a node (a scalar, an alias, or the start of a collection) in the open
    /// collection: as a mapping's key (a string, checked against the keys before it) or
    /// value, or as a sequence's element.
    /// - Returns: where the node is, and what is wrong with it as a key if anything is.
    private static func place(
        _ event: yaml_event_t,
        in stack: inout [Collection],
        line: Int
    ) -> (step: Step, problem: Problem?) {
        guard !stack.isEmpty else { return (.root, nil) }
        let top = stack.count - 1
        if !stack[top].isMapping {
            defer { stack[top].count += 1 }
            return (.index(stack[top].count), nil)
        }
        if let key = stack[top].pendingKey {
            stack[top].pendingKey = nil
            return (.key(key), nil)
        }
        guard event.type == YAML_SCALAR_EVENT else {
            let what =
                switch event.type {
                case YAML_ALIAS_EVENT: "an alias"
                case YAML_SEQUENCE_START_EVENT: "a list"
                default: "a mapping"
                }
            let problem = Problem(key: Self.path(stack, nil), line: line, reason: "a key must be a string, not \(what)")
            return (.root, problem)
        }
        let key = Self.key(event)
        if let firstLine = stack[top].keys.updateValue(line, forKey: key) {
            let problem = Problem(
                key: Self.path(stack, .key(key.text)),
                line: line,
                reason: "duplicate key (first at line \(firstLine))"
            )
            return (.root, problem)
        }
        stack[top].pendingKey = key.text
        return (.key(key.text), nil)
    }

    /// The dotted path of a node (`last`, in the innermost open collection), as
    /// ``ConfigNode`` names keys: `exports[0].name`.
    private static func path(_ stack: [Collection], _ last: Step?) -> String {
        var path = ""
        for step in stack.map(\.step) + (last.map { [$0] } ?? []) {
            switch step {
            case .root: break
            case .key(let name): path += path.isEmpty ? name : ".\(name)"
            case .index(let index): path += "[\(index)]"
            }
        }
        return path
    }

    /// The key as Yams compares it: its text and resolved tag. A plain or quoted
    /// scalar is a string (``ConfigNode/resolver`` gives plain scalars no other type),
    /// as is one with the non-specific tag `!`; an explicit tag stays as written.
    private static func key(_ event: yaml_event_t) -> Key {
        let scalar = event.data.scalar
        let text = String(decoding: UnsafeBufferPointer(start: scalar.value, count: Int(scalar.length)), as: UTF8.self)
        guard scalar.quoted_implicit != 1, scalar.plain_implicit != 1, let raw = scalar.tag else {
            return Key(text: text, tag: Tag.Name.str.rawValue)
        }
        let tag = String(cString: raw)
        return Key(text: text, tag: tag == Tag.Name.nonSpecific.rawValue ? Tag.Name.str.rawValue : tag)
    }
}
