//! The code laid out hot-first (scripts/link-hot-first, docs/performance.md): the built
//! `ricochet` binary starts with the functions of scripts/hot-functions.txt, and the linker
//! script never costs a build: other binaries link unchanged, and a linker that rejects
//! the order still links.

use std::collections::HashSet;
use std::path::Path;
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

/// The names of scripts/hot-functions.txt, hottest first.
fn list() -> Vec<String> {
    let list = std::fs::read_to_string(repo().join("scripts/hot-functions.txt")).unwrap();
    (list.lines())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

fn listed() -> HashSet<String> {
    list().iter().map(|l| unhashed(l).to_string()).collect()
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

/// A stand-in for `cc` in a scratch directory: records each call's arguments (one call per
/// line, in `calls`) and keeps the order file it was given (as `order`), then runs `then`.
struct FakeLinker {
    dir: tempfile::TempDir,
}

/// The fake's answers: linking succeeds; GNU ld refusing lld's option; a link that fails
/// for its own reasons.
const LINKS: &str = "exit 0";
const REJECTS_THE_ORDER: &str = "case \"$*\" in *--symbol-ordering-file=*) \
                                 echo 'unknown option' >&2; exit 1;; esac\nexit 0";
const FAILS: &str = "echo 'undefined symbol: missing' >&2\nexit 3";

impl FakeLinker {
    fn new(then: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (calls, order) = (dir.path().join("calls"), dir.path().join("order"));
        let driver = format!(
            "#!/bin/sh\necho \"$*\" >> '{calls}'\nfor a in \"$@\"; do case \"$a\" in \
             -Wl,--symbol-ordering-file=*) cp \"${{a#-Wl,--symbol-ordering-file=}}\" '{order}';; \
             esac; done\n{then}\n",
            calls = calls.display(),
            order = order.display(),
        );
        std::fs::write(dir.path().join("cc"), driver).unwrap();
        let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(dir.path().join("cc"), executable).unwrap();
        // The test's own ricochet binary stands in for the objects being linked.
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ricochet"), dir.path().join("input.o"))
            .unwrap();
        Self { dir }
    }

    /// The arguments rustc gives the linker here.
    fn arguments(&self) -> String {
        let object = self.dir.path().join("input.o");
        format!("-m64 {} -o out -nodefaultlibs", object.display())
    }

    /// Runs the script as rustc would for binary `bin`: its output, and each call's
    /// arguments.
    fn link(&self, bin: &str, env: &[(&str, &str)]) -> (std::process::Output, Vec<String>) {
        let output = Command::new(repo().join("scripts/link-hot-first"))
            .args(self.arguments().split(' '))
            .env("CARGO_BIN_NAME", bin)
            .env("RICOCHET_LINKER", self.dir.path().join("cc"))
            .env_remove("RICOCHET_HOT_FIRST")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let calls = std::fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default();
        (output, calls.lines().map(String::from).collect())
    }

    /// The order file the linker was given, if it was given one.
    fn order(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("order")).ok()
    }
}

#[test]
fn other_binaries_link_with_the_arguments_rustc_gave() {
    let linker = FakeLinker::new(LINKS);
    let (output, calls) = linker.link("ricochet-bench", &[]);
    assert!(output.status.success());
    assert_eq!(
        calls,
        [linker.arguments()],
        "one call, the arguments as given"
    );
}

#[test]
fn ricochet_hot_first_0_links_the_binary_without_the_order() {
    let linker = FakeLinker::new(LINKS);
    let (output, calls) = linker.link("ricochet", &[("RICOCHET_HOT_FIRST", "0")]);
    assert!(output.status.success());
    assert_eq!(
        calls,
        [linker.arguments()],
        "one call, the arguments as given"
    );
    assert_eq!(linker.order(), None);
}

/// The order holds listed functions only, in the list's order, and its file is gone once
/// the link is done.
#[test]
fn the_ricochet_binary_is_linked_with_the_order() {
    let linker = FakeLinker::new(LINKS);
    let (output, calls) = linker.link("ricochet", &[]);
    assert!(output.status.success());
    assert_eq!(calls.len(), 1, "{calls:?}");
    let file = (calls[0].split_whitespace())
        .find_map(|a| a.strip_prefix("-Wl,--symbol-ordering-file="))
        .expect("the order is passed");
    assert!(
        calls[0].starts_with(&linker.arguments()),
        "rustc's arguments first"
    );
    assert!(!Path::new(file).exists(), "{file} was removed");
    let order = linker.order().expect("the linker got the order file");
    let list = list();
    // A name's rank is its first place in the list (builds of a generic function share it).
    let mut rank = std::collections::HashMap::new();
    for (at, name) in list.iter().enumerate() {
        rank.entry(unhashed(name)).or_insert(at);
    }
    let ranks: Vec<usize> = (order.lines())
        .map(|symbol| {
            *rank
                .get(unhashed(symbol))
                .unwrap_or_else(|| panic!("{symbol} is not listed"))
        })
        .collect();
    assert!(ranks.len() > 1_000, "{} functions ordered", ranks.len());
    assert!(ranks.is_sorted(), "in the list's order");
}

#[test]
fn a_linker_that_rejects_the_order_still_links_the_binary() {
    let linker = FakeLinker::new(REJECTS_THE_ORDER);
    let (output, calls) = linker.link("ricochet", &[]);
    assert!(output.status.success(), "the link succeeds");
    assert_eq!(calls.len(), 2, "with the order, then without: {calls:?}");
    assert!(calls[0].contains("--symbol-ordering-file="));
    assert_eq!(calls[1], linker.arguments());
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
    let linker = FakeLinker::new(FAILS);
    let (output, calls) = linker.link("ricochet", &[]);
    assert_eq!(output.status.code(), Some(3), "the linker's status");
    assert_eq!(calls.len(), 2, "with the order, then without");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("undefined symbol: missing").count(),
        1,
        "{stderr}"
    );
}

/// Where the objects hold the very function the profile saw (the list's name with its
/// hash), only it is placed, not the other builds of that name; a listed name whose hash
/// matches nothing (another compiler or dependency version) places every build of it; an
/// unlisted function is not placed.
#[test]
fn an_exact_match_wins_over_the_same_name_with_another_hash() {
    let list = list();
    let hashed: Vec<&String> = (list.iter())
        .filter(|l| unhashed(l) != l.as_str())
        .collect();
    let exact = hashed[0];
    let other = (hashed.iter())
        .find(|l| unhashed(l) != unhashed(exact))
        .expect("two listed names");
    let rebuilt = |name: &str, hash: &str| format!("{}17h{hash}E", unhashed(name));
    let sibling = rebuilt(exact, "00000000000000a1");
    let moved = rebuilt(other, "00000000000000b2");
    let unlisted = "_ZN8ricochet8unlisted17h00000000000000c3E".to_string();
    let linker = FakeLinker::new(LINKS);
    let source = linker.dir.path().join("input.s");
    let mut assembly = String::from(".text\n");
    for name in [&unlisted, &moved, &sibling, exact] {
        assembly += &format!(".globl \"{name}\"\n.type \"{name}\", @function\n\"{name}\":\n ret\n");
    }
    std::fs::write(&source, assembly).unwrap();
    let object = linker.dir.path().join("input.o");
    std::fs::remove_file(&object).unwrap();
    let assembled = Command::new("cc")
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .output()
        .unwrap();
    assert!(
        assembled.status.success(),
        "{}",
        String::from_utf8_lossy(&assembled.stderr)
    );
    let (output, _) = linker.link("ricochet", &[]);
    assert!(output.status.success());
    let order = linker.order().expect("the linker got the order file");
    assert_eq!(order.lines().collect::<Vec<_>>(), [exact.as_str(), &moved]);
}
