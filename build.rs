//! The code fingerprint, computed when the harness is built, so it is the code that runs:
//! whatever folder the harness starts in, committed or not. Every file that
//! `fingerprint.paths` covers is hashed; the binary gets the per-file sha256s and their
//! combined hash (`src/config/fingerprint.rs`), and Cargo reruns this script when any
//! listed path changes.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

#[path = "src/config/fingerprint/list.rs"]
mod list;

const LIST: &str = "fingerprint.paths";

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by Cargo"));
    println!("cargo:rerun-if-changed={LIST}");
    let text = std::fs::read_to_string(root.join(LIST))
        .unwrap_or_else(|e| fail(&format!("cannot read it: {e}")));
    let rules = list::parse(&text).unwrap_or_else(|e| fail(&e));
    for r in rules.iter().filter(|r| !r.exclude) {
        println!("cargo:rerun-if-changed={}", r.path.trim_end_matches('/'));
    }
    let files = list::files(&root, &rules).unwrap_or_else(|e| fail(&e));
    let mut hashed = Vec::with_capacity(files.len());
    for f in &files {
        // Each file too: older Cargos watch a folder's own timestamp only.
        println!("cargo:rerun-if-changed={f}");
        let bytes = std::fs::read(root.join(f)).unwrap_or_else(|e| fail(&format!("{f}: {e}")));
        hashed.push((f.as_str(), hex(&Sha256::digest(&bytes))));
    }
    let manifest = list::manifest(hashed.iter().map(|(f, h)| (*f, h.as_str())));
    let fingerprint = hex(&Sha256::digest(manifest.as_bytes()));
    println!("cargo:rustc-env=HARNESS_CODE_FINGERPRINT={fingerprint}");

    let mut out = String::from(
        "/// Every file in the code fingerprint with its sha256, sorted by path (build.rs).\n\
         pub const FILES: &[(&str, &str)] = &[\n",
    );
    for (f, h) in &hashed {
        out.push_str(&format!("    ({f:?}, {h:?}),\n"));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by Cargo"));
    std::fs::write(dest.join("fingerprint_files.rs"), out)
        .unwrap_or_else(|e| fail(&format!("cannot write the file list: {e}")));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {LIST}: {msg}");
    std::process::exit(1);
}
