// SPDX-License-Identifier: Apache-2.0
import CYaml
import Yams

/// Finds the first key that a YAML mapping repeats, with its key path and line.
///
/// Yams refuses a mapping with a repeated key while it builds the tree, so the tree that
/// would give the key's path never exists, and its error names only the key and where
/// it *first* appears. To report the repetition like every other configuration error
/// (`FILE:LINE: KEY: REASON`, the line of the second occurrence), this walks libyaml's
/// events (the parser under Yams) once more, on the error path only: one pass, linear
/// in the text, an explicit stack (libyaml caps nesting at 1,000 levels) and no tree.
///
/// Keys are compared as Yams compares them (value and tag, resolved as
/// ``ConfigNode/resolver`` does), so it finds the repetition Yams refused. Keys that are themselves sequences or mappings are not
/// compared (configuration keys are strings); for those it finds nothing.
enum DuplicateKeyFinder {
    struct Duplicate: Equatable {
        /// The dotted path of the repeated key, as ``ConfigNode`` names keys.
        var key: String
        /// 1-based line of the repetition.
        var line: Int
        /// 1-based line of the key's first occurrence in the same mapping.
        var firstLine: Int
    }

    private enum Container {
        /// `keys`: each scalar key seen so far and its line; `path`: the value's path
        /// while a value is expected, `nil` while a key is.
        case mapping(path: String, keys: [Node: Int], valuePath: String?)
        case sequence(path: String, count: Int)
        /// A sequence or mapping used as a key: its contents are not checked.
        case complexKey
    }

    static func first(in text: String) -> Duplicate? {
        var text = text
        return text.withUTF8 { bytes in Self.first(in: bytes) }
    }

    private static func first(in bytes: UnsafeBufferPointer<UInt8>) -> Duplicate? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return nil }
        defer { yaml_parser_delete(&parser) }
        yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
        yaml_parser_set_input_string(&parser, bytes.baseAddress, bytes.count)
        var stack: [Container] = []
        var event = yaml_event_t()
        while yaml_parser_parse(&parser, &event) == 1 {
            defer { yaml_event_delete(&event) }
            let line = Int(event.start_mark.line) + 1
            switch event.type {
            case YAML_SCALAR_EVENT, YAML_ALIAS_EVENT:
                let key = event.type == YAML_SCALAR_EVENT ? Self.scalarKey(event) : nil
                if let duplicate = Self.node(in: &stack, key: key, line: line).duplicate { return duplicate }
            case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                let place = Self.node(in: &stack, key: nil, line: line)
                if let duplicate = place.duplicate { return duplicate }
                if let path = place.path {
                    stack.append(
                        event.type == YAML_MAPPING_START_EVENT
                            ? .mapping(path: path, keys: [:], valuePath: nil) : .sequence(path: path, count: 0)
                    )
                } else {
                    stack.append(.complexKey)
                }
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                // The parent moved on when the collection started.
                _ = stack.popLast()
                if stack.isEmpty { return nil }
            case YAML_DOCUMENT_END_EVENT, YAML_STREAM_END_EVENT:
                return nil
            default:
                break
            }
        }
        return nil
    }

    /// Places a new node (a scalar, an alias, or the start of a collection) in its
    /// parent: as a mapping's key (checked against the keys before it) or value, or as
    /// a sequence's element.
    /// - Returns: the node's path (`nil` for a key or inside a complex key) and the
    ///   duplicate it is, if it is one.
    private static func node(
        in stack: inout [Container],
        key: Node?,
        line: Int
    ) -> (path: String?, duplicate: Duplicate?) {
        guard let parent = stack.popLast() else { return ("", nil) }
        switch parent {
        case .complexKey:
            stack.append(parent)
            return (nil, nil)
        case .sequence(let path, let count):
            stack.append(.sequence(path: path, count: count + 1))
            return ("\(path)[\(count)]", nil)
        case .mapping(let path, let keys, let valuePath?):
            stack.append(.mapping(path: path, keys: keys, valuePath: nil))
            return (valuePath, nil)
        case .mapping(let path, var keys, nil):
            guard let key, let name = key.scalar?.string else {
                // A complex or aliased key: its value has no path of its own.
                stack.append(.mapping(path: path, keys: keys, valuePath: path))
                return (nil, nil)
            }
            let keyPath = path.isEmpty ? name : "\(path).\(name)"
            if let firstLine = keys[key] {
                return (nil, Duplicate(key: keyPath, line: line, firstLine: firstLine))
            }
            keys[key] = line
            stack.append(.mapping(path: path, keys: keys, valuePath: keyPath))
            return (nil, nil)
        }
    }

    /// The key as Yams builds it (value and tag), for Yams' notion of equal keys.
    private static func scalarKey(_ event: yaml_event_t) -> Node {
        let scalar = event.data.scalar
        let value = String(decoding: UnsafeBufferPointer(start: scalar.value, count: Int(scalar.length)), as: UTF8.self)
        let tag: Tag.Name
        if scalar.quoted_implicit == 1 {
            tag = .str
        } else if let raw = scalar.tag {
            tag = Tag.Name(rawValue: String(cString: raw))
        } else {
            tag = .implicit
        }
        return Node.scalar(Node.Scalar(value, Tag(tag, ConfigNode.resolver)))
    }
}
