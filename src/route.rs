//! Routing: which configured route a message belongs to, and the tokens it captures.
//!
//! A pattern is a NATS subject with wildcards: literal tokens, `*` (one token), a final `>`
//! (one or more tokens) and named tokens `{id}`, which match like `*` and hand their value to
//! the path template. The first configured route that matches wins.

use std::ops::Range;
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("subject pattern is empty")]
    Empty,
    #[error("subject pattern {0:?} has an empty token (check for '..' or a leading/trailing '.')")]
    EmptyToken(String),
    #[error("'>' may only be the last token of {0:?}")]
    TailNotLast(String),
    #[error("token {token:?} in {pattern:?}: wildcards and braces must be a whole token")]
    MixedToken { pattern: String, token: String },
    #[error("capture name {name:?} in {pattern:?} must be letters, digits or '_'")]
    BadName { pattern: String, name: String },
    #[error("capture {{{name}}} appears twice in {pattern:?}")]
    DuplicateName { pattern: String, name: String },
    #[error("subject pattern {0:?} must not contain whitespace")]
    Whitespace(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`, or a named capture `{name}` when `Some`.
    One(Option<String>),
    /// `>`: one or more tokens, only last.
    Tail,
}

/// A parsed subject pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    tokens: Vec<Token>,
    capture_names: Vec<String>,
}

impl Pattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.chars().any(char::is_whitespace) {
            return Err(PatternError::Whitespace(pattern.into()));
        }
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        let mut capture_names: Vec<String> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "" => return Err(PatternError::EmptyToken(pattern.into())),
                "*" => Token::One(None),
                ">" if i + 1 == parts.len() => Token::Tail,
                ">" => return Err(PatternError::TailNotLast(pattern.into())),
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(PatternError::BadName {
                            pattern: pattern.into(),
                            name: name.into(),
                        });
                    }
                    if capture_names.iter().any(|n| n == name) {
                        return Err(PatternError::DuplicateName {
                            pattern: pattern.into(),
                            name: name.into(),
                        });
                    }
                    capture_names.push(name.to_string());
                    Token::One(Some(name.to_string()))
                }
                p if p.contains(['*', '>', '{', '}']) => {
                    return Err(PatternError::MixedToken {
                        pattern: pattern.into(),
                        token: p.into(),
                    })
                }
                p => Token::Literal(p.to_string()),
            };
            tokens.push(token);
        }
        Ok(Self {
            tokens,
            capture_names,
        })
    }

    /// Names of the `{name}` tokens, in order.
    pub fn capture_names(&self) -> &[String] {
        &self.capture_names
    }

    /// The subject to subscribe to: named tokens become `*`.
    pub fn subscription_subject(&self) -> String {
        let parts: Vec<&str> = self
            .tokens
            .iter()
            .map(|t| match t {
                Token::Literal(s) => s.as_str(),
                Token::One(_) => "*",
                Token::Tail => ">",
            })
            .collect();
        parts.join(".")
    }

    /// Whether some subject matches both patterns (named tokens count as `*`).
    pub fn overlaps(&self, other: &Pattern) -> bool {
        fn overlap(a: &[Token], b: &[Token]) -> bool {
            match (a.split_first(), b.split_first()) {
                (None, None) => true,
                // `>` takes one or more tokens; the other pattern has at least one left.
                (Some((Token::Tail, _)), Some(_)) | (Some(_), Some((Token::Tail, _))) => true,
                (Some((x, a)), Some((y, b))) => {
                    let same = match (x, y) {
                        (Token::Literal(x), Token::Literal(y)) => x == y,
                        _ => true,
                    };
                    same && overlap(a, b)
                }
                _ => false,
            }
        }
        overlap(&self.tokens, &other.tokens)
    }

    /// Matches a concrete subject; on success returns the byte ranges of the named tokens
    /// in `subject`, in the order of [`Self::capture_names`].
    pub fn matches(&self, subject: &str) -> Option<Captures> {
        let mut captures = Captures::default();
        let mut parts = Tokens::new(subject.as_bytes());
        for token in &self.tokens {
            if let Token::Tail = token {
                // One or more remaining tokens.
                return parts
                    .next()
                    .is_some_and(|p| !p.is_empty())
                    .then_some(captures);
            }
            let range = parts.next()?;
            let part = &subject.as_bytes()[range.clone()];
            match token {
                Token::Literal(literal) if literal.as_bytes() == part => {}
                Token::One(name) if !part.is_empty() => {
                    if name.is_some() {
                        captures.ranges.push(range);
                    }
                }
                _ => return None,
            }
        }
        parts.next().is_none().then_some(captures)
    }
}

/// The byte ranges of a subject's '.'-separated tokens, as `str::split('.')` yields them
/// (an empty subject is one empty token), found with a plain byte scan: a subject is
/// matched against each route's pattern for every message.
struct Tokens<'a> {
    subject: &'a [u8],
    /// Where the next token starts; `None` once the last one was taken.
    next: Option<usize>,
}

impl<'a> Tokens<'a> {
    fn new(subject: &'a [u8]) -> Self {
        Self {
            subject,
            next: Some(0),
        }
    }
}

impl Iterator for Tokens<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        let start = self.next?;
        match self.subject[start..].iter().position(|b| *b == b'.') {
            Some(length) => {
                self.next = Some(start + length + 1);
                Some(start..start + length)
            }
            None => {
                self.next = None;
                Some(start..self.subject.len())
            }
        }
    }
}

/// Byte ranges of the named tokens in the subject they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captures {
    ranges: Vec<Range<usize>>,
}

impl Captures {
    /// The captured values, in the order of the pattern's capture names.
    pub fn values<'s>(&self, subject: &'s str) -> Vec<&'s str> {
        self.ranges.iter().map(|r| &subject[r.clone()]).collect()
    }
}

/// Ordered routes; the first match wins.
#[derive(Debug)]
pub struct RouteTable<R> {
    routes: Vec<(Pattern, Arc<R>)>,
}

impl<R> RouteTable<R> {
    pub fn new(routes: Vec<(Pattern, Arc<R>)>) -> Self {
        Self { routes }
    }

    pub fn find(&self, subject: &str) -> Option<(&Arc<R>, Captures)> {
        self.routes
            .iter()
            .find_map(|(pattern, route)| pattern.matches(subject).map(|c| (route, c)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Pattern, Arc<R>)> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pattern: &str, subject: &str) -> Option<Vec<String>> {
        let p = Pattern::parse(pattern).unwrap();
        p.matches(subject)
            .map(|c| c.values(subject).into_iter().map(String::from).collect())
    }

    #[test]
    fn literal_and_named_tokens() {
        assert_eq!(
            values("orders.{id}.get", "orders.42.get"),
            Some(vec!["42".into()])
        );
        assert_eq!(values("orders.{id}.get", "orders.42.put"), None);
        assert_eq!(values("orders.{id}.get", "orders.42.get.x"), None);
        assert_eq!(values("orders.{id}.get", "orders.get"), None);
        assert_eq!(
            values("a.{x}.{y}", "a.1.2"),
            Some(vec!["1".to_string(), "2".to_string()])
        );
    }

    #[test]
    fn wildcards() {
        assert_eq!(values("orders.*.get", "orders.7.get"), Some(vec![]));
        assert_eq!(values("orders.>", "orders.7.get"), Some(vec![]));
        assert_eq!(values("orders.>", "orders.7"), Some(vec![]));
        assert_eq!(values("orders.>", "orders"), None);
        assert_eq!(values("orders.>", "orders."), None);
        assert_eq!(values("{tenant}.>", "acme.x.y"), Some(vec!["acme".into()]));
        assert_eq!(values("*", "a.b"), None);
    }

    #[test]
    fn subjects_split_into_tokens_as_str_split_does() {
        for subject in [
            "",
            ".",
            "a",
            "a.",
            ".a",
            "a..b",
            "orders.42.get",
            "é.ü.>",
            "a.b.c.",
        ] {
            let ranges: Vec<&str> = Tokens::new(subject.as_bytes())
                .map(|r| &subject[r])
                .collect();
            let split: Vec<&str> = subject.split('.').collect();
            assert_eq!(ranges, split, "{subject:?}");
        }
        assert_eq!(values("orders.>", "orders.x..y"), Some(vec![]));
        assert_eq!(values("orders.>", "orders..y"), None);
        assert_eq!(values("orders.*", "orders."), None);
        assert_eq!(values("{a}", ""), None);
    }

    #[test]
    fn subscription_subjects() {
        let p = Pattern::parse("orders.{id}.*.>").unwrap();
        assert_eq!(p.subscription_subject(), "orders.*.*.>");
        assert_eq!(p.capture_names(), ["id".to_string()]);
    }

    /// Checked against every subject of up to three tokens (as many as the patterns have)
    /// over a small alphabet: two patterns overlap exactly when one of those subjects
    /// matches both.
    #[test]
    fn overlapping_patterns_share_a_subject() {
        fn all(alphabet: &[&str], max: usize) -> Vec<String> {
            let mut found: Vec<String> = alphabet.iter().map(|t| t.to_string()).collect();
            let mut last = found.clone();
            for _ in 1..max {
                last = (last.iter())
                    .flat_map(|p| alphabet.iter().map(move |t| format!("{p}.{t}")))
                    .collect();
                found.extend(last.iter().cloned());
            }
            found
        }
        let subjects = all(&["a", "b", "c"], 3);
        let patterns: Vec<String> = (all(&["a", "b", "*", "{x}", ">"], 3).into_iter())
            .filter(|p| Pattern::parse(p).is_ok())
            .collect();
        let mut overlapping = 0;
        for a in &patterns {
            for b in &patterns {
                let (pa, pb) = (Pattern::parse(a).unwrap(), Pattern::parse(b).unwrap());
                let shared = subjects
                    .iter()
                    .any(|s| pa.matches(s).is_some() && pb.matches(s).is_some());
                assert_eq!(pa.overlaps(&pb), shared, "{a} and {b}");
                overlapping += usize::from(shared);
            }
        }
        assert!(overlapping > 0 && overlapping < patterns.len() * patterns.len());
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert!(p("orders.{id}.get").overlaps(&p("orders.>")));
        assert!(!p("orders.>").overlaps(&p("orders")));
        assert!(!p("orders.*.get").overlaps(&p("orders.*.put")));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(Pattern::parse(""), Err(PatternError::Empty)));
        assert!(matches!(
            Pattern::parse("a..b"),
            Err(PatternError::EmptyToken(_))
        ));
        assert!(matches!(
            Pattern::parse("a.>.b"),
            Err(PatternError::TailNotLast(_))
        ));
        assert!(matches!(
            Pattern::parse("a.b*"),
            Err(PatternError::MixedToken { .. })
        ));
        assert!(matches!(
            Pattern::parse("a.{x-y}"),
            Err(PatternError::BadName { .. })
        ));
        assert!(matches!(
            Pattern::parse("{x}.{x}"),
            Err(PatternError::DuplicateName { .. })
        ));
        assert!(matches!(
            Pattern::parse("a b"),
            Err(PatternError::Whitespace(_))
        ));
    }

    #[test]
    fn first_matching_route_wins() {
        let table = RouteTable::new(vec![
            (
                Pattern::parse("orders.special.get").unwrap(),
                Arc::new("special"),
            ),
            (
                Pattern::parse("orders.{id}.get").unwrap(),
                Arc::new("by-id"),
            ),
            (Pattern::parse("orders.>").unwrap(), Arc::new("catch-all")),
        ]);
        assert_eq!(**table.find("orders.special.get").unwrap().0, "special");
        assert_eq!(**table.find("orders.1.get").unwrap().0, "by-id");
        assert_eq!(**table.find("orders.1.delete").unwrap().0, "catch-all");
        assert!(table.find("users.1").is_none());
    }
}
