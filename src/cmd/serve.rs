//! `vitalake serve`: the Postgres-wire server over the lake, until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use clap::Args;
use vitalake::config::Config;

use super::{cancel_on_signal, open_lake};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default: serve.listen, 127.0.0.1:5433).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

pub async fn run(config: &Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let lake = open_lake(config)?;
    let mut options = config.serve.clone();
    if let Some(listen) = args.listen {
        options.listen = listen;
    }
    let listener = vitalake::serve::bind(&options.listen)
        .await
        .map_err(vitalake::Error::from)?;
    let tls = options.tls_cert.is_some();
    let server = vitalake::serve::Server::new(lake, options, |var| std::env::var(var).ok())
        .await
        .map_err(vitalake::Error::from)?;
    let addr = listener.local_addr()?;
    eprintln!(
        "serving {} on {addr} ({}); Ctrl-C stops",
        config.lake.root,
        if tls { "TLS available" } else { "no TLS" }
    );
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cancel_on_signal(stop.clone()));
    server.run(listener, stop.cancelled_owned()).await;
    Ok(ExitCode::SUCCESS)
}
