//! Embeds the bundled token list, when there is one, into the binary.
//!
//! SAM's `rust-cargolambda` build ships only the `bootstrap` executable, so a
//! token file next to it would never reach Lambda. The operator instead puts
//! the list at `bundle/tokens.json` (or names a file with
//! `GATEWAY_TOKENS_BUNDLE`) before `sam build`; it is compiled in and used when
//! no other token source is configured.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=GATEWAY_TOKENS_BUNDLE");
    // Watching the directory (which always exists) rather than the file
    // avoids rebuilding on every build while the file is absent.
    println!("cargo:rerun-if-changed=bundle");
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let path = match std::env::var("GATEWAY_TOKENS_BUNDLE") {
        Ok(named) if !named.is_empty() => {
            let path = manifest.join(named);
            println!("cargo:rerun-if-changed={}", path.display());
            if !path.is_file() {
                panic!(
                    "GATEWAY_TOKENS_BUNDLE names {}, which is not a file",
                    path.display()
                );
            }
            Some(path)
        }
        _ => Some(manifest.join("bundle").join("tokens.json")).filter(|p| p.is_file()),
    };
    let code = match path {
        Some(path) => format!(
            "/// The token list compiled in at build time.\npub const BUNDLED_TOKENS: Option<&str> = Some(include_str!({:?}));\n",
            path.display().to_string()
        ),
        None => "/// No token list was bundled at build time.\npub const BUNDLED_TOKENS: Option<&str> = None;\n".to_owned(),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("bundled_tokens.rs");
    std::fs::write(out, code).expect("write bundled_tokens.rs");
}
