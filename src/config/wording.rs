//! Configuration errors in ricochet's words, for `load.rs`: where a TOML syntax error is
//! (line, column, key) without the text of the line, and serde's texts ("invalid type: map,
//! expected a duration", "wanted exactly 1 element") as what was expected and what kind of
//! value was found. No error says the value of a secret.

use super::ConfigError;

/// A TOML syntax error by line, column and the key on that line, never the text: toml's
/// own message quotes the source line, and that line may hold a secret
/// (`password = "s3cret` left unterminated).
pub(super) fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    // toml's message alone names what it expected; the first line, in case a future
    // version appends the source to it.
    let what = error.message().lines().next().unwrap_or("syntax error");
    let Some(offset) = error.span().map(|span| span.start.min(text.len())) else {
        return ConfigError::new("(file)", format!("not valid TOML: {what}"));
    };
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let key = key_on_line(text, line_start).unwrap_or_else(|| "(file)".into());
    ConfigError::new(
        key,
        format!("not valid TOML at line {line}, column {column}: {what} (the line is not shown: it may hold a secret)"),
    )
}

/// The key assigned on the line starting at `line_start`, under the last table header
/// before it (`[[routes]]` counted, so `routes[1].name`), when the line reads `key = ...`.
fn key_on_line(text: &str, line_start: usize) -> Option<String> {
    let is_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'))
    };
    let rest = &text[line_start..];
    let line = rest.lines().next().unwrap_or_default();
    let key = line.split_once('=')?.0.trim();
    if !is_key(key) {
        return None;
    }
    let key = key.replace('"', "");
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    for header in text[..line_start].lines().map(str::trim) {
        if let Some(name) = header.strip_prefix("[[").and_then(|h| h.split_once("]]")) {
            let name = name.0.trim().to_string();
            let count = arrays.entry(name.clone()).or_default();
            table = format!("{name}[{count}]");
            *count += 1;
        } else if let Some(name) = header.strip_prefix('[').and_then(|h| h.split_once(']')) {
            let name = name.0.trim();
            // `[routes.kafka]` after `[[routes]]` belongs to the last route.
            table = match name.split_once('.') {
                Some((array, tail)) if arrays.contains_key(array) => {
                    format!("{array}[{}].{tail}", arrays[array] - 1)
                }
                _ => name.to_string(),
            };
        }
    }
    Some(if table.is_empty() {
        key
    } else {
        format!("{table}.{key}")
    })
}

/// serde's and toml's texts in ricochet's words: what was expected, and what kind of value
/// was found (the value itself is not repeated). Texts of ricochet's own types pass as they are.
pub(super) fn plain(message: &str) -> String {
    if message.starts_with("wanted exactly 1 element") {
        return "expected one name (a string), found a table with several keys".into();
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "expected {}, found {}",
                expected_words(expected),
                kind_of(found)
            );
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            // The value of a key that is not secret helps to find it: shown as written.
            let value = found.split_once(' ').map_or(found, |(_, value)| value);
            let value = value.trim_matches('`');
            return format!("expected {}, found {value}", expected_words(expected));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!("expected {expected}, found {found} elements");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((name, choices)) = rest.split_once('`') {
            let choices = choices
                .trim_start_matches(", expected one of ")
                .trim_start_matches(", expected ")
                .replace('`', "\"");
            return format!("\"{name}\" is not one of the names this key accepts: {choices}");
        }
    }
    if message.starts_with("data did not match any variant of untagged enum") {
        return "not one of the forms this key accepts".into();
    }
    message.to_string()
}

/// serde's names of Rust types in words.
fn expected_words(expected: &str) -> String {
    match expected {
        "usize" | "u64" | "u32" => "a whole number, 0 or more".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u8" => "a whole number from 0 to 255".into(),
        "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number".into(),
        "f64" | "f32" => "a number".into(),
        "a sequence" => "a list".into(),
        "a map" => "a table".into(),
        other if other.starts_with("struct ") => "a table".into(),
        other => other.to_string(),
    }
}

/// `string "x"` -> `a string`: the kind of a value serde names, without the value.
fn kind_of(found: &str) -> &'static str {
    let word = found.split([' ', '`', '"']).next().unwrap_or_default();
    match word {
        "string" | "char" => "a string",
        "integer" => "an integer",
        "floating" => "a number with a fraction",
        "boolean" => "a boolean",
        "map" => "a table",
        "sequence" => "a list",
        "unit" | "option" => "nothing",
        _ => "another kind of value",
    }
}
