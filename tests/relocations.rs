//! ricochet's binary carries its relocations packed (build.rs, docs/performance.md "Packed
//! relocations") where the C library it links can load them, unless the build says
//! `RICOCHET_PACK_RELOCS=0`, and still starts.

use std::process::Command;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Whether the C library the build links marks its support for packed relocations.
fn libc_loads_packed_relocations() -> bool {
    let path = run("cc", &["-print-file-name=libc.so.6"]);
    let libc = std::fs::read(path.trim()).expect("cc names the libc it links");
    libc.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR")
}

/// The size of one of the binary's sections, from `readelf -SW`.
fn section_size(sections: &str, name: &str) -> Option<u64> {
    sections.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == name)?;
        u64::from_str_radix(fields.get(at + 4)?, 16).ok()
    })
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn the_binary_packs_its_relative_relocations_where_glibc_loads_them() {
    let binary = env!("CARGO_BIN_EXE_ricochet");
    let sections = run("readelf", &["-SW", binary]);
    let rela = section_size(&sections, ".rela.dyn").unwrap_or(0);
    let relr = section_size(&sections, ".relr.dyn");
    // The same build compiles this test: it sees the build's RICOCHET_PACK_RELOCS.
    let turned_off = option_env!("RICOCHET_PACK_RELOCS") == Some("0");
    if turned_off || !libc_loads_packed_relocations() {
        assert_eq!(relr, None, "packed relocations (turned off: {turned_off})");
        return;
    }
    let relr = relr.expect("a .relr.dyn section");
    // Unpacked, .rela.dyn holds a 24-byte entry per pointer in the binary's data (571 kB
    // in a release build). Packed, what stays in it are the relocations against symbols.
    assert!(
        rela < 64 * 1024,
        ".rela.dyn is {rela} bytes; .relr.dyn {relr}"
    );
    assert!(relr > 0, ".relr.dyn is empty");
    let dynamic = run("readelf", &["-dW", binary]);
    assert!(dynamic.contains("(RELR)"), "{dynamic}");
    // And the loader takes it: the binary runs.
    assert!(run(binary, &["--version"]).contains("ricochet"));
}
