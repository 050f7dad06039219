//! `--callgrind --by-function`: where the instructions go, from the callgrind dumps that
//! `--callgrind` takes (ricochet's, its parts', tracing off and on). Each function's own
//! instructions (exclusive of what it calls) are read from the dump and grouped by the
//! crate the function belongs to (ricochet by module; mimalloc and the allocator shims as
//! "allocation"), and two counts are compared per request: ricochet against the sum of its
//! parts, tracing on against tracing off.
//!
//! Generic code (core, alloc, std, hashbrown, the allocator, libc's memcpy) has no crate of
//! its own to blame, so a second grouping charges its cost to its callers, in proportion to
//! what each caller's calls to it cost, up to the first caller that has a crate: who
//! allocates, copies and hashes.

use std::collections::{HashMap, HashSet};

use crate::parts::Count;

/// How many groups and functions to print.
const TOP: usize = 20;

/// Instructions by function name, per request of a count, and who calls whom.
struct Profile {
    functions: HashMap<String, f64>,
    /// callee -> caller -> the inclusive cost of the caller's calls to it.
    callers: HashMap<String, HashMap<String, u64>>,
}

impl Profile {
    fn new(count: &Count) -> Self {
        let requests = count.requests.max(1) as f64;
        let costs = read_dump(&count.dump);
        let functions = (costs.own.into_iter())
            .map(|(name, cost)| (name, cost as f64 / requests))
            .collect();
        Self {
            functions,
            callers: costs.callers,
        }
    }

    /// By group, with generic code's cost charged to its callers' groups.
    fn charged_groups(&self) -> HashMap<String, f64> {
        let mut shares = HashMap::new();
        let mut groups = HashMap::new();
        // In order, so that cycles resolve the same way every time.
        let mut names: Vec<(&String, &f64)> = self.functions.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, cost) in names {
            let share = self.shares(name, &mut shares, &mut HashSet::new());
            for (group, fraction) in share {
                *groups.entry(group).or_default() += cost * fraction;
            }
        }
        groups
    }

    /// The groups a function's cost is charged to, as fractions: its own group, or for
    /// generic code its callers' shares weighted by their calls' costs. A cycle of generic
    /// callers keeps the cost in the function's own group.
    fn shares(
        &self,
        name: &str,
        memo: &mut HashMap<String, Vec<(String, f64)>>,
        visiting: &mut HashSet<String>,
    ) -> Vec<(String, f64)> {
        if let Some(known) = memo.get(name) {
            return known.clone();
        }
        let own = group(name);
        let callers = self.callers.get(name).filter(|_| generic(&own));
        let total: u64 = callers.map(|c| c.values().sum()).unwrap_or(0);
        if total == 0 || !visiting.insert(name.to_string()) {
            return vec![(own, 1.0)];
        }
        let mut shares: HashMap<String, f64> = HashMap::new();
        let mut callers: Vec<(&String, &u64)> = callers.into_iter().flatten().collect();
        callers.sort();
        for (caller, cost) in callers {
            let weight = *cost as f64 / total as f64;
            let charged = match caller == name {
                true => vec![(own.clone(), 1.0)],
                false => self.shares(caller, memo, visiting),
            };
            for (group, fraction) in charged {
                *shares.entry(group).or_default() += weight * fraction;
            }
        }
        visiting.remove(name);
        let shares: Vec<(String, f64)> = shares.into_iter().collect();
        memo.insert(name.to_string(), shares.clone());
        shares
    }

    fn groups(&self) -> HashMap<String, f64> {
        let mut groups = HashMap::new();
        for (name, cost) in &self.functions {
            *groups.entry(group(name)).or_default() += cost;
        }
        groups
    }
}

/// Whether a group is generic code, charged to its callers in `charged_groups`.
fn generic(group: &str) -> bool {
    group == STD || group == ALLOCATION || group == COPIES || group == "hashbrown"
}

const STD: &str = "std (core, alloc, std)";
const ALLOCATION: &str = "allocation";
const COPIES: &str = "memcpy, memset, memcmp (libc)";

/// What a dump says: each function's own cost, and the calls between functions.
struct Dump {
    own: HashMap<String, u64>,
    callers: HashMap<String, HashMap<String, u64>>,
}

/// Each function's own cost (the first event, Ir) in a callgrind dump, summed over the
/// files and objects it appears under, and each call's inclusive cost. The format: `fn=`
/// starts a function's cost lines; `cfn=` names a callee, and the line after `calls=` is the
/// call's inclusive cost, not the caller's own; names may be compressed to `(id)` after
/// their first use, one id space shared by `fn=` and `cfn=`.
fn read_dump(dump: &str) -> Dump {
    let positions = dump
        .lines()
        .find_map(|l| l.strip_prefix("positions:"))
        .map(|p| p.split_whitespace().count())
        .unwrap_or(1);
    let mut names: HashMap<String, String> = HashMap::new();
    let mut own: HashMap<String, u64> = HashMap::new();
    let mut callers: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut current = String::new();
    let mut callee = String::new();
    let mut after_calls = false;
    for line in dump.lines() {
        if let Some(spec) = line.strip_prefix("fn=") {
            current = name(spec, &mut names);
        } else if let Some(spec) = line.strip_prefix("cfn=") {
            callee = name(spec, &mut names);
        } else if line.starts_with("calls=") {
            after_calls = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            let cost: u64 = (line.split_whitespace().nth(positions))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let to = match std::mem::take(&mut after_calls) {
                true => callers.entry(callee.clone()).or_default(),
                false => &mut own,
            };
            *to.entry(current.clone()).or_default() += cost;
        }
    }
    Dump { own, callers }
}

/// `(id) name` defines a compressed name, `(id)` uses it, `name` is plain.
fn name(spec: &str, names: &mut HashMap<String, String>) -> String {
    let Some(rest) = spec.strip_prefix('(') else {
        return spec.to_string();
    };
    let Some((id, name)) = rest.split_once(')') else {
        return spec.to_string();
    };
    let name = name.trim();
    if name.is_empty() {
        names.get(id).cloned().unwrap_or_else(|| spec.to_string())
    } else {
        names.insert(id.to_string(), name.to_string());
        name.to_string()
    }
}

/// The group of a function: the first crate its name mentions other than core, alloc and
/// std (`core::ptr::drop_in_place<async_nats::Message>` is async-nats'), ricochet's by
/// module; C functions by what they do.
fn group(name: &str) -> String {
    let c_name = !name.contains("::");
    if c_name {
        let allocation = [
            "malloc", "free", "calloc", "realloc", "mi_", "__rust_", "__rdl_",
        ];
        if allocation.iter().any(|a| name.contains(a)) {
            return ALLOCATION.into();
        }
        if ["memcpy", "memmove", "memset", "memcmp", "bcmp"]
            .iter()
            .any(|m| name.contains(m))
        {
            return COPIES.into();
        }
        return "other C (libc, ld.so, ...)".into();
    }
    if name.starts_with("alloc::alloc::") || name.contains("GlobalAlloc") {
        return ALLOCATION.into();
    }
    let crates = paths(name);
    let Some(first) = crates
        .iter()
        .find(|(c, _)| !["core", "alloc", "std"].contains(c))
    else {
        return STD.into();
    };
    match first.0 {
        "ricochet" => format!("ricochet::{}", first.1),
        "tokio" | "mio" => "tokio (and mio)".into(),
        "hyper" | "hyper_util" | "http_body" | "http_body_util" | "h2" | "httparse" => {
            "hyper (and httparse, http-body)".into()
        }
        "http" => "http (types)".into(),
        "async_nats" | "nuid" | "nkeys" => "async-nats".into(),
        // `__rustc::__rust_alloc` and the like: the global allocator's shims.
        "mimalloc" | "libmimalloc_sys" | "__rustc" => ALLOCATION.into(),
        c if c.starts_with("opentelemetry") || c == "prost" => "opentelemetry (and prost)".into(),
        c if c.starts_with("tracing") => "tracing".into(),
        c if c.starts_with("futures") => "futures".into(),
        c if c.starts_with("serde") => "serde".into(),
        "ricochet_bench" | "ricochet_bench_part" => "the part's own code".into(),
        other => other.to_string(),
    }
}

/// The first two segments of every path in a demangled name, in order: `(crate, module)`.
fn paths(name: &str) -> Vec<(&str, &str)> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        // Skip to the start of an identifier that is not preceded by "::".
        let start = rest.find(is_ident).unwrap_or(rest.len());
        let preceded = rest[..start].ends_with("::");
        rest = &rest[start..];
        let end = rest.find(|c| !is_ident(c)).unwrap_or(rest.len());
        let ident = &rest[..end];
        rest = &rest[end..];
        if preceded || !rest.starts_with("::") {
            continue;
        }
        let after = &rest[2..];
        let module_end = after.find(|c| !is_ident(c)).unwrap_or(after.len());
        found.push((ident, &after[..module_end]));
    }
    found
}

/// `--callgrind --by-function` after the parts: ricochet, the parts and the rest by group,
/// then the functions that account for most of the rest.
pub fn print_rest(ricochet: &Count, responder: &Count, client: &Count, schedule: &Count) {
    let ricochet = Profile::new(ricochet);
    let responder = Profile::new(responder);
    let client = Profile::new(client);
    let schedule = Profile::new(schedule);
    // The L0 part is its run less its schedule's, by group and by function alike.
    let parts = |of: fn(&Profile) -> HashMap<String, f64>| {
        let mut sum = of(&responder);
        for (name, cost) in of(&client) {
            *sum.entry(name).or_default() += cost;
        }
        for (name, cost) in of(&schedule) {
            *sum.entry(name).or_default() -= cost;
        }
        sum
    };
    let groups = parts(Profile::groups);
    let charged = parts(Profile::charged_groups);
    let functions = parts(|p| p.functions.clone());
    println!();
    println!("by group, instructions per request (exclusive; the parts' own driver code is in their column):");
    print_comparison(
        ("ricochet", &ricochet.groups()),
        ("parts", &groups),
        |name| name.to_string(),
    );
    println!();
    println!("by group, with std, hashbrown, allocation and memcpy charged to their callers:");
    print_comparison(
        ("ricochet", &ricochet.charged_groups()),
        ("parts", &charged),
        |name| name.to_string(),
    );
    println!();
    println!("by function, the largest differences (ricochet less the parts):");
    print_comparison(
        ("ricochet", &ricochet.functions),
        ("parts", &functions),
        short,
    );
}

/// `--callgrind --tracing --by-function`: tracing on against off, by group and function.
pub fn print_tracing(off: &Count, on: &Count) {
    let (off, on) = (Profile::new(off), Profile::new(on));
    println!();
    println!("tracing on less off, by group, instructions per request (exclusive):");
    print_comparison(("on", &on.groups()), ("off", &off.groups()), |n| {
        n.to_string()
    });
    println!();
    println!("tracing on less off, by group, with std, hashbrown, allocation and memcpy charged to their callers:");
    print_comparison(
        ("on", &on.charged_groups()),
        ("off", &off.charged_groups()),
        |n| n.to_string(),
    );
    println!();
    println!("tracing on less off, by function, the largest differences:");
    print_comparison(("on", &on.functions), ("off", &off.functions), short);
}

/// The `TOP` largest differences `a - b` by absolute value, with both sides.
fn print_comparison(
    (a_name, a): (&str, &HashMap<String, f64>),
    (b_name, b): (&str, &HashMap<String, f64>),
    label: impl Fn(&str) -> String,
) {
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut rows: Vec<(&String, f64, f64)> = names
        .into_iter()
        .map(|k| {
            let (x, y) = (
                a.get(k).copied().unwrap_or(0.0),
                b.get(k).copied().unwrap_or(0.0),
            );
            (k, x, y)
        })
        .collect();
    rows.sort_by(|x, y| {
        (y.1 - y.2)
            .abs()
            .total_cmp(&(x.1 - x.2).abs())
            .then(x.0.cmp(y.0))
    });
    println!("  {:>9} {:>9} {:>9}  name", a_name, b_name, "diff");
    for (name, x, y) in rows.into_iter().take(TOP) {
        println!("  {x:>9.0} {y:>9.0} {:>+9.0}  {}", x - y, label(name));
    }
    let (sa, sb): (f64, f64) = (a.values().sum(), b.values().sum());
    println!("  {sa:>9.0} {sb:>9.0} {:>+9.0}  (all)", sa - sb);
}

/// A function name cut to a readable length.
fn short(name: &str) -> String {
    const MAX: usize = 110;
    if name.chars().count() <= MAX {
        return name.to_string();
    }
    let cut: String = name.chars().take(MAX).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_line_is_the_callees_and_compressed_names_resolve() {
        let dump = "positions: line\nevents: Ir\nfn=(1) a::f\n3 10\ncfn=(2) b::g\ncalls=1 5\n5 100\n4 7\nfn=(2)\n5 100\nfn=(1)\n+1 3\n";
        let dump = read_dump(dump);
        assert_eq!(dump.own["a::f"], 20);
        assert_eq!(dump.own["b::g"], 100);
        assert_eq!(dump.callers["b::g"]["a::f"], 100);
    }

    #[test]
    fn generic_code_is_charged_to_its_callers_by_what_their_calls_cost() {
        // tokio and hyper call memcpy (through a std function for hyper): 40 instructions
        // of memcpy's own, a quarter of them through tokio's calls.
        let dump = "events: Ir\nfn=(1) tokio::a\n1 5\ncfn=(3) memcpy\ncalls=1 1\n1 10\n\
                    fn=(2) hyper::b\n1 5\ncfn=(4) core::c\ncalls=1 1\n1 30\n\
                    fn=(4)\n1 0\ncfn=(3)\ncalls=1 1\n1 30\nfn=(3)\n1 40\n";
        let count = Count::new(1, format!("{dump}totals: 50\n")).unwrap();
        let groups = Profile::new(&count).charged_groups();
        assert_eq!(groups["tokio (and mio)"], 15.0);
        assert_eq!(groups["hyper (and httparse, http-body)"], 35.0);
        assert_eq!(groups.len(), 2, "{groups:?}");
    }

    #[test]
    fn functions_group_by_the_first_crate_they_name() {
        assert_eq!(
            group("core::ptr::drop_in_place<async_nats::message::Message>"),
            "async-nats"
        );
        assert_eq!(
            group("<ricochet::pipeline::Deliver as core::future::Future>::poll"),
            "ricochet::pipeline"
        );
        assert_eq!(group("tokio::runtime::task::raw::poll"), "tokio (and mio)");
        assert_eq!(group("_mi_page_malloc"), "allocation");
        assert_eq!(group("__rustc::__rust_alloc"), "allocation");
        assert_eq!(
            group("__memcpy_avx_unaligned_erms"),
            "memcpy, memset, memcmp (libc)"
        );
        assert_eq!(
            group("alloc::vec::Vec<T,A>::push"),
            "std (core, alloc, std)"
        );
    }
}
