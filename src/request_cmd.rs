//! `ricochet request`: send one NATS request and print the reply, to try a route by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind};
use bytes::Bytes;
use clap::Args;

#[derive(Args)]
pub struct RequestArgs {
    /// Subject to send the request to, e.g. orders.42.get
    subject: String,
    /// Request body as text.
    #[arg(long, short, conflicts_with = "file")]
    data: Option<String>,
    /// Read the request body from a file ("-" for stdin).
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// A header, repeatable: --header Content-Type=application/json
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// How long to wait for the reply, e.g. 500ms or 5s.
    #[arg(long, short, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// NATS server; defaults to nats.url of --config, else nats://127.0.0.1:4222.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// The configuration file whose nats.url, TLS and credentials apply (ignored when it
    /// cannot be read or is invalid).
    #[arg(long, short, default_value = default_config!())]
    config: PathBuf,
}

// A clap value parser: clap prints the message as the argument's error, nobody branches on it.
fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .or_else(|| text.split_once(':'))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

pub fn run(args: RequestArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(send(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

// The binary's edge: every error is a finished sentence for the terminal, printed once by
// `run` and never matched on, so a typed error (or anyhow's chain) would add nothing.
async fn send(args: RequestArgs) -> Result<(), String> {
    // The configuration's TLS and credentials apply to its server (and to --nats-url).
    let config = ricochet::settings::load(&args.config)
        .ok()
        .map(|s| s.config.nats);
    let url = (args.nats_url.clone())
        .or_else(|| config.as_ref().map(|c| c.url.clone()))
        .unwrap_or_else(ricochet::config::defaults::nats_url);
    let payload = match (&args.data, &args.file) {
        (Some(text), _) => Bytes::from(text.clone()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buffer = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buffer)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            Bytes::from(buffer)
        }
        (None, Some(path)) => Bytes::from(
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
        (None, None) => Bytes::new(),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        headers.append(name.as_str(), value.as_str());
    }
    // Credentials in the URL (`--nats-url`, NATS_URL) replace the configuration's.
    let url_has_credentials = ricochet::config::split_credentials(&url)
        .map(|(_, auth)| auth.is_some())
        .unwrap_or(false);
    let config = config.map(|mut nats| {
        if url_has_credentials {
            nats.user = None;
            nats.password = None;
            nats.password_file = None;
            nats.token = None;
            nats.token_file = None;
            nats.nkey_seed = None;
            nats.nkey_seed_file = None;
            nats.creds_file = None;
        }
        nats
    });
    let options = match &config {
        Some(nats) => (ricochet::source::nats::options(nats, &Default::default()).await)
            .map_err(|e| e.to_string())?,
        None => async_nats::ConnectOptions::new(),
    };
    // The URL's credentials go to the options, never to async-nats inside the URL.
    let (options, servers) =
        ricochet::source::nats::with_url_credentials(options, &url).map_err(|e| e.to_string())?;
    let client = options
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to NATS at {}: {}",
                ricochet::config::redact_url(&url),
                ricochet::source::nats::describe(&e)
            )
        })?;
    let request = async_nats::Request::new()
        .payload(payload)
        .headers(headers)
        .timeout(Some(args.timeout));
    let reply = client
        .send_request(args.subject.clone(), request)
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => format!(
                "nobody listens on {:?} (is ricochet running with a route for it?)",
                args.subject
            ),
            RequestErrorKind::TimedOut => format!("no reply within {:?}", args.timeout),
            _ => e.to_string(),
        })?;
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Ricochet-Status"))
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| "(no Ricochet-Status header)".into());
    println!("status: {status}");
    if let Some(headers) = &reply.headers {
        let mut lines: Vec<String> = headers
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| format!("{name}: {}", v.as_str()))
            })
            .collect();
        lines.sort();
        for line in lines {
            println!("{line}");
        }
    }
    println!();
    println!("{}", String::from_utf8_lossy(&reply.payload));
    Ok(())
}
