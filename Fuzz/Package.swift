// swift-tools-version:6.1
// SPDX-License-Identifier: Apache-2.0
// libFuzzer targets for every parser that reads bytes from another domain, and for the
// configuration loaders.
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
        fuzzer("FuzzStreamFrame", testing: "HMXStream", "HMXGateway"),
        fuzzer("FuzzProxyProtocol", testing: "HMXProxyProtocol"),
        fuzzer("FuzzConfig", testing: "HMXConfig", "HMXGateway", "HMXEmulator"),
        fuzzer("FuzzAgentRequest", testing: "HMXConformance"),
    ]
)

/// A libFuzzer executable for some of the product's libraries (with NIOCore, for
/// targets that feed ByteBuffers).
func fuzzer(_ name: String, testing libraries: String...) -> Target {
    .executableTarget(
        name: name,
        dependencies: ["FuzzSupport"] + libraries.map { .product(name: $0, package: "hmx-gateway") } + [
            .product(name: "NIOCore", package: "swift-nio")
        ]
    )
}
