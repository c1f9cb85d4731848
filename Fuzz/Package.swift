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
        .executableTarget(name: "FuzzRingReader", dependencies: ["FuzzSupport", .product(name: "HMXCore", package: "hmx-gateway")]),
        .executableTarget(
            name: "FuzzLinkWire",
            dependencies: [
                "FuzzSupport",
                .product(name: "HMXCore", package: "hmx-gateway"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "FuzzStreamFrame",
            dependencies: [
                "FuzzSupport",
                .product(name: "HMXStream", package: "hmx-gateway"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "FuzzProxyProtocol",
            dependencies: [
                "FuzzSupport",
                .product(name: "HMXProxyProtocol", package: "hmx-gateway"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
    ]
)
