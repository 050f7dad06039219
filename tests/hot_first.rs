//! The code laid out hot-first (scripts/link-hot-first, docs/performance.md): the built
//! `ricochet` binary starts with the functions of scripts/hot-functions.txt, and the linker
//! script never costs a build: other binaries link unchanged, and a linker that rejects
//! the order still links.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A symbol's name without LTO's `.llvm.<n>` suffix and Rust's `17h<hash>E`.
fn unhashed(name: &str) -> &str {
    let name = name.split(".llvm.").next().unwrap_or(name);
    match name.rfind("17h") {
        Some(at) if name.ends_with('E') && name.len() - at == 20 => &name[..at],
        _ => name,
    }
}

fn listed() -> HashSet<String> {
    let list = std::fs::read_to_string(repo().join("scripts/hot-functions.txt")).unwrap();
    (list.lines())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| unhashed(l).to_string())
        .collect()
}

/// The test's `ricochet` binary was linked through the script (.cargo/config.toml): its
/// code begins with listed functions. Linked without the order (`RICOCHET_HOT_FIRST=0`),
/// 53 of the first 300 functions of the debug build were listed ones (119 of a release
/// build's: names are compared without their hash, which generic functions share).
#[test]
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn the_ricochet_binary_begins_with_the_functions_that_run() {
    let nm = Command::new("nm")
        .args(["-n", "--defined-only", env!("CARGO_BIN_EXE_ricochet")])
        .output()
        .expect("nm (binutils) runs");
    assert!(
        nm.status.success(),
        "{}",
        String::from_utf8_lossy(&nm.stderr)
    );
    let text = String::from_utf8(nm.stdout).unwrap();
    let functions: Vec<&str> = (text.lines())
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (_, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            matches!(kind, "t" | "T" | "w" | "W").then_some(name)
        })
        .take(300)
        .collect();
    let listed = listed();
    let first: Vec<&&str> = functions
        .iter()
        .filter(|f| listed.contains(unhashed(f)))
        .collect();
    assert!(
        first.len() >= 285,
        "{} of the first {} functions are listed in scripts/hot-functions.txt; the first ones: {:?}",
        first.len(),
        functions.len(),
        &functions[..10.min(functions.len())]
    );
}

/// A stand-in for `cc`: records each call's arguments, one call per line, and fails a call
/// that carries the order when `REJECT_ORDER` is set (as GNU ld does).
fn fake_driver(dir: &Path) -> (PathBuf, PathBuf) {
    let calls = dir.join("calls");
    let driver = dir.join("cc");
    std::fs::write(
        &driver,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{calls}'\ncase \"$*\" in *--symbol-ordering-file=*) \
             [ -n \"$REJECT_ORDER\" ] && {{ echo 'unknown option' >&2; exit 1; }};; esac\nexit 0\n",
            calls = calls.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&driver)
        .status()
        .unwrap();
    (driver, calls)
}

/// Runs the script as rustc would for binary `bin`, linking the test's own ricochet binary
/// (named as an object) into `out`.
fn link(dir: &Path, driver: &Path, bin: &str, reject: bool) -> (std::process::Output, String) {
    let object = dir.join("input.o");
    if !object.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ricochet"), &object).unwrap();
    }
    let mut command = Command::new(repo().join("scripts/link-hot-first"));
    command
        .args([
            "-m64",
            object.to_str().unwrap(),
            "-o",
            "out",
            "-nodefaultlibs",
        ])
        .env("CARGO_BIN_NAME", bin)
        .env("RICOCHET_LINKER", driver)
        .env_remove("RICOCHET_HOT_FIRST");
    if reject {
        command.env("REJECT_ORDER", "1");
    } else {
        command.env_remove("REJECT_ORDER");
    }
    let output = command.output().unwrap();
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    (output, calls)
}

#[test]
fn other_binaries_link_with_the_arguments_rustc_gave() {
    let dir = tempfile::tempdir().unwrap();
    let (driver, _) = fake_driver(dir.path());
    let (output, calls) = link(dir.path(), &driver, "ricochet-bench", false);
    assert!(output.status.success());
    let object = dir.path().join("input.o");
    assert_eq!(
        calls,
        format!("-m64 {} -o out -nodefaultlibs\n", object.display()),
        "one call, the arguments as given"
    );
}

#[test]
fn the_ricochet_binary_is_linked_with_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let (driver, _) = fake_driver(dir.path());
    let (output, calls) = link(dir.path(), &driver, "ricochet", false);
    assert!(output.status.success());
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].contains("-Wl,--symbol-ordering-file="),
        "{calls:?}"
    );
    // The order file is gone once the link is done.
    let order = calls[0]
        .split_whitespace()
        .find_map(|a| a.strip_prefix("-Wl,--symbol-ordering-file="))
        .unwrap();
    assert!(!Path::new(order).exists(), "{order} was removed");
}

#[test]
fn a_linker_that_rejects_the_order_still_links_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (driver, _) = fake_driver(dir.path());
    let (output, calls) = link(dir.path(), &driver, "ricochet", true);
    assert!(output.status.success(), "the link succeeds");
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "with the order, then without: {calls:?}");
    assert!(calls[0].contains("--symbol-ordering-file="));
    let object = dir.path().join("input.o");
    assert_eq!(
        calls[1],
        format!("-m64 {} -o out -nodefaultlibs", object.display())
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("linked without the function order") && stderr.contains("unknown option"),
        "says so, with the linker's reason: {stderr}"
    );
}

/// A link that fails for its own reasons fails as it would have, with the linker's
/// message once and its exit status.
#[test]
fn a_link_that_fails_anyway_fails_with_its_own_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let driver = dir.path().join("cc");
    std::fs::write(
        &driver,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\necho 'undefined symbol: missing' >&2\nexit 3\n",
            calls.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&driver)
        .status()
        .unwrap();
    let (output, calls) = link(dir.path(), &driver, "ricochet", false);
    assert_eq!(output.status.code(), Some(3), "the linker's status");
    assert_eq!(calls.lines().count(), 2, "with the order, then without");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("undefined symbol: missing").count(),
        1,
        "{stderr}"
    );
}
