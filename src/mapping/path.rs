//! Path templates: `/orders/{id}` filled with tokens captured from the subject.
//!
//! Tokens come from the outside world, so they are percent-encoded (everything but RFC 3986
//! unreserved characters) and hostile ones are refused: a message can change neither the
//! scheme, host and port (fixed by `upstream.base_url`) nor escape the template.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::MapError;

/// Everything except ALPHA / DIGIT / "-" / "." / "_" / "~" is encoded.
const TOKEN: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("path {0:?} must start with '/'")]
    NotAbsolute(String),
    #[error("path {0:?} must not contain whitespace, control characters or '#'")]
    BadCharacter(String),
    #[error("path {0:?} has an unbalanced '{{' or '}}'")]
    Unbalanced(String),
    #[error("path {path:?} uses {{{name}}}, which the subject pattern does not capture")]
    UnknownCapture { path: String, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// Index into the pattern's capture names.
    Capture(usize, String),
}

#[derive(Debug, Clone)]
pub struct PathTemplate {
    parts: Vec<Part>,
}

impl PathTemplate {
    pub fn parse(template: &str, capture_names: &[String]) -> Result<Self, TemplateError> {
        if !template.starts_with('/') {
            return Err(TemplateError::NotAbsolute(template.into()));
        }
        if template
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
        {
            return Err(TemplateError::BadCharacter(template.into()));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(TemplateError::Unbalanced(template.into()));
            }
            let close = rest[open..]
                .find('}')
                .map(|i| open + i)
                .ok_or_else(|| TemplateError::Unbalanced(template.into()))?;
            let name = &rest[open + 1..close];
            if name.contains('{') {
                return Err(TemplateError::Unbalanced(template.into()));
            }
            let index = capture_names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| TemplateError::UnknownCapture {
                    path: template.into(),
                    name: name.into(),
                })?;
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            parts.push(Part::Capture(index, name.to_string()));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// Whether the path captures nothing, and so is the same for every message.
    pub fn is_fixed(&self) -> bool {
        self.parts
            .iter()
            .all(|part| matches!(part, Part::Literal(_)))
    }

    #[cfg(test)]
    fn render(&self, values: &[&str]) -> Result<String, MapError> {
        let mut out = String::new();
        self.render_into(values, &mut out)?;
        Ok(out)
    }

    /// Appends the path filled with `values` (in capture-name order) to `out`, refusing
    /// hostile tokens.
    pub fn render_into(&self, values: &[&str], out: &mut String) -> Result<(), MapError> {
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Capture(index, name) => {
                    let value = values.get(*index).copied().unwrap_or_default();
                    check_token(name, value)?;
                    out.extend(utf8_percent_encode(value, TOKEN));
                }
            }
        }
        Ok(())
    }
}

fn check_token(name: &str, value: &str) -> Result<(), MapError> {
    let reason = if value.is_empty() {
        "is empty"
    } else if value.contains("..") || value == "." {
        "contains '..'"
    } else if value.chars().any(char::is_control) {
        "contains a control character"
    } else if value.contains(['?', '#']) {
        "contains '?' or '#'"
    } else {
        return Ok(());
    };
    Err(MapError::HostileToken {
        name: name.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn render(template: &str, value: &str) -> Result<String, MapError> {
        PathTemplate::parse(template, &names(&["id"]))
            .unwrap()
            .render(&[value])
    }

    #[test]
    fn fills_captures_in_order() {
        let t = PathTemplate::parse("/t/{b}/x/{a}?v=1", &names(&["a", "b"])).unwrap();
        assert_eq!(t.render(&["1", "2"]).unwrap(), "/t/2/x/1?v=1");
        let plain = PathTemplate::parse("/health", &[]).unwrap();
        assert_eq!(plain.render(&[]).unwrap(), "/health");
    }

    #[test]
    fn tokens_are_percent_encoded() {
        assert_eq!(render("/orders/{id}", "a/b").unwrap(), "/orders/a%2Fb");
        assert_eq!(
            render("/orders/{id}", "%2e%2e").unwrap(),
            "/orders/%252e%252e"
        );
        assert_eq!(
            render("/orders/{id}", "ü~_-.x").unwrap(),
            "/orders/%C3%BC~_-.x"
        );
        assert_eq!(
            render("/orders/{id}", "@evil.com:80").unwrap(),
            "/orders/%40evil.com%3A80"
        );
        assert_eq!(
            render("/orders/{id}", "a;b=c&d").unwrap(),
            "/orders/a%3Bb%3Dc%26d"
        );
    }

    #[test]
    fn hostile_tokens_are_refused() {
        for hostile in ["..", "a..b", ".", "a?x=1", "a#frag", "a\u{7}b", "a\rb", ""] {
            let err = render("/orders/{id}", hostile).unwrap_err();
            assert!(matches!(err, MapError::HostileToken { .. }), "{hostile:?}");
        }
    }

    #[test]
    fn bad_templates_are_refused() {
        let n = names(&["id"]);
        assert!(matches!(
            PathTemplate::parse("orders", &n),
            Err(TemplateError::NotAbsolute(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/a b", &n),
            Err(TemplateError::BadCharacter(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/a#b", &n),
            Err(TemplateError::BadCharacter(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/{id", &n),
            Err(TemplateError::Unbalanced(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/id}", &n),
            Err(TemplateError::Unbalanced(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/{other}", &n),
            Err(TemplateError::UnknownCapture { .. })
        ));
    }
}
