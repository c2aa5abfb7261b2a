//! Regenerates `include/murmur.h` from the C ABI in `src/ffi/c/` with cbindgen (style in
//! `cbindgen.toml`). The header is committed; `scripts/test-c.sh` fails when it is stale.
//!
//! Only `src/ffi/c/` is parsed, so only the `murmur_*` C ABI reaches the header (not uniffi's
//! scaffolding). A cbindgen failure never fails the build: it is reported as a warning and the
//! committed header is left as it is (the staleness check then catches it).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/ffi/c");
    println!("cargo:rerun-if-changed=include/murmur.h");

    let dir = match std::env::var("CARGO_MANIFEST_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => return,
    };
    let config = match cbindgen::Config::from_file(dir.join("cbindgen.toml")) {
        Ok(c) => c,
        Err(e) => {
            println!(
                "cargo:warning=cbindgen.toml unreadable, include/murmur.h not regenerated: {e}"
            );
            return;
        }
    };
    let result = std::panic::catch_unwind(|| {
        cbindgen::Builder::new()
            .with_config(config)
            .with_src(dir.join("src/ffi/c/mod.rs"))
            .generate()
    });
    match result {
        Ok(Ok(bindings)) => {
            // Writes only when the content changed (the header stays byte-for-byte stable).
            bindings.write_to_file(dir.join("include/murmur.h"));
        }
        Ok(Err(e)) => {
            println!("cargo:warning=cbindgen failed, include/murmur.h not regenerated: {e}")
        }
        Err(_) => println!("cargo:warning=cbindgen panicked, include/murmur.h not regenerated"),
    }
}
