// swift-tools-version:5.9
// The Swift binding of Murmur: the uniffi-generated sources (Sources/Murmur/murmur.swift) over the
// C header and module map of the Rust library (Sources/murmurFFI). It links the library built by
// `cargo build --release` at the repository root (../../target/release/libmurmur.{a,dylib,so});
// for an iOS app, build an XCFramework of the static library instead (see README.md).
import Foundation
import PackageDescription

// ../../target/release, from this file's directory (so it does not depend on the working directory).
let rustLibDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../target/release").standardized.path

let package = Package(
    name: "Murmur",
    platforms: [.macOS(.v12), .iOS(.v15)],
    products: [
        .library(name: "Murmur", targets: ["Murmur"]),
    ],
    targets: [
        // The C declarations of the Rust library's uniffi scaffolding.
        .systemLibrary(name: "murmurFFI", path: "Sources/murmurFFI"),
        .target(
            name: "Murmur",
            dependencies: ["murmurFFI"],
            path: "Sources/Murmur",
            linkerSettings: [
                .linkedLibrary("murmur"),
                .unsafeFlags(["-L", rustLibDir]),
            ]
        ),
        .testTarget(name: "MurmurTests", dependencies: ["Murmur"], path: "Tests/MurmurTests"),
    ]
)
