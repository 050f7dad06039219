//! Config parsing with any text and environment overrides: no panic, and an error never
//! echoes the value of a password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ricochet::settings::load_str;

const SECRET: &str = "fuzz-secret-2f9c";

fuzz_target!(|input: (String, Vec<(String, String)>)| {
    let (text, env) = input;
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(name, value)| (format!("RICOCHET__{name}"), value))
        .chain([("RICOCHET__NATS__PASSWORD".to_string(), SECRET.to_string())])
        .collect();
    let text = text.replace(SECRET, "");
    if let Err(errors) = load_str(&text, env) {
        let shown = errors.to_string();
        assert!(!shown.contains(SECRET), "{shown}");
    }
});
