//! Generates the Python, Kotlin and Swift bindings from the built library:
//! `cargo run --bin uniffi-bindgen -- generate --library target/debug/libmurmur.so --language python --out-dir out`.
fn main() {
    uniffi::uniffi_bindgen_main()
}
