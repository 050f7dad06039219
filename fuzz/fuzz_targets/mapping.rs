//! The message -> HTTP mapping with any subject, token and headers: no panic, and a request
//! that is built never leaves the configured scheme, host, port and path prefix.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ricochet::mapping::RequestMapping;
use ricochet::message::Inbound;
use ricochet::route::Pattern;
use ricochet::settings::load_str;

#[derive(Arbitrary, Debug)]
struct Message {
    token: String,
    subject: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

const CONFIG: &str = "[upstream]\nbase_url = \"https://127.0.0.1:8443/api\"\n[[routes]]\nname = \"r\"\nsubject = \"orders.{id}.items\"\nmethod = \"GET\"\npath = \"/orders/{id}/items\"\n";

fuzz_target!(|message: Message| {
    let config = load_str(CONFIG, Vec::new()).unwrap().config;
    let pattern = Pattern::parse(&config.routes[0].subject).unwrap();
    let mapping = RequestMapping::new(&config.routes[0], &config.upstream, &pattern).unwrap();
    let inbound = Inbound::new(
        message.subject.clone(),
        Some("_INBOX.fuzz".into()),
        message.headers,
        bytes::Bytes::from(message.body),
    );
    let mut tokens = vec![message.token];
    if let Some(captures) = pattern.matches(&message.subject) {
        tokens.extend(
            captures
                .values(&message.subject)
                .iter()
                .map(|t| t.to_string()),
        );
    }
    for token in tokens {
        let Ok(request) = mapping.build(&inbound, &[token.as_str()]) else {
            continue;
        };
        let uri = request.uri();
        assert_eq!(uri.scheme_str(), Some("https"));
        assert_eq!(uri.authority().unwrap().as_str(), "127.0.0.1:8443");
        assert!(uri.query().is_none());
        let path = uri.path();
        let segment = path
            .strip_prefix("/api/orders/")
            .and_then(|rest| rest.strip_suffix("/items"))
            .expect("the prefix and the template");
        assert!(!segment.contains(['/', '?', '#']));
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        assert_eq!(decoded, token.as_str());
        for name in request.headers().keys() {
            let name = name.as_str();
            assert!(
                name != "host"
                    && !name.starts_with("ricochet-")
                    && !name.starts_with("x-forwarded-")
            );
        }
    }
});
