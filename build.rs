//! The ricochet binary's link reads scripts/hot-functions.txt and two environment variables
//! (scripts/link-hot-first, the linker .cargo/config.toml names): a change to any of them
//! rebuilds the package, so that the next binary reflects it.
//!
//! On GNU/Linux the binary's relocations are also packed (below); `RICOCHET_PACK_RELOCS=0`
//! turns that off.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=scripts/hot-functions.txt");
    println!("cargo:rerun-if-changed=scripts/link-hot-first");
    println!("cargo:rerun-if-env-changed=RICOCHET_HOT_FIRST");
    println!("cargo:rerun-if-env-changed=RICOCHET_LINKER");
    println!("cargo:rerun-if-env-changed=RICOCHET_PACK_RELOCS");
    let wanted = std::env::var("RICOCHET_PACK_RELOCS").map_or(true, |v| v != "0");
    if wanted && can_pack_relative_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// ricochet is a position-independent executable: at start the loader adds the load address
/// to every pointer in its data (vtables, string tables). Written as RELA entries, 24 bytes
/// each, that is 571 kB the loader reads and that stays resident; packed as RELR entries (a
/// bitmap of the words to relocate), about 9 kB (docs/performance.md, "Packed relocations").
/// A binary with packed relocations runs only on glibc 2.36 or later, which marks its
/// support with the symbol version `GLIBC_ABI_DT_RELR`: they are asked for only when the C
/// library the build links (a native GNU/Linux build's) has it. Elsewhere the link is
/// unchanged. Without them a build on glibc 2.36 still runs on 2.34 (Ubuntu 22.04, RHEL 9):
/// `RICOCHET_PACK_RELOCS=0` keeps that for a binary meant to be copied to such a host.
fn can_pack_relative_relocations() -> bool {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("HOST") != var("TARGET")
    {
        return false;
    }
    let Ok(output) = Command::new("cc")
        .arg("-print-file-name=libc.so.6")
        .output()
    else {
        return false;
    };
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    // Without the library, cc prints the bare name back.
    if !output.status.success() || !path.starts_with('/') {
        return false;
    }
    std::fs::read(&path)
        .map(|libc| libc.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR"))
        .unwrap_or(false)
}
