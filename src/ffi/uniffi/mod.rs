//! uniffi objects for the Python, Kotlin and Swift bindings.
