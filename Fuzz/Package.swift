// swift-tools-version:6.1
// SPDX-License-Identifier: Apache-2.0
// libFuzzer targets for every parser that reads bytes from another domain.
// Build: swift build --package-path Fuzz -c release -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
import PackageDescription

let package = Package(
    name: "hmx-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "hmx-gateway", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .target(name: "FuzzSupport"),
        fuzzer("FuzzRingReader", testing: "HMXCore"),
        fuzzer("FuzzLinkWire", testing: "HMXCore"),
        fuzzer("FuzzStreamFrame", testing: "HMXStream"),
        fuzzer("FuzzProxyProtocol", testing: "HMXProxyProtocol"),
    ]
)

/// A libFuzzer executable for one of the product's libraries (with NIOCore, for
/// targets that feed ByteBuffers).
func fuzzer(_ name: String, testing library: String) -> Target {
    .executableTarget(
        name: name,
        dependencies: [
            "FuzzSupport",
            .product(name: library, package: "hmx-gateway"),
            .product(name: "NIOCore", package: "swift-nio"),
        ]
    )
}
