//! The `vitalake` binary: parse arguments, set up logs, run the command (`cmd`), map the result to
//! an exit code (0 ok, 1 failed, 2 bad usage or bad input: `vitalake::Error::exit_code`).

mod cmd;

/// FHIR decoding allocates many small strings and maps per resource; with glibc's allocator that
/// was a third of ingest time (perf, BENCHMARKS.md). mimalloc handles that pattern far better.
/// Its v2 (the `v2` feature in Cargo.toml) rather than v3: v3 gives freed pages back only after a
/// second, so a 1 GB ingest peaked at 750-850 MB against 480-520 MB with v2, which costs about 7%
/// of the time (BENCHMARKS.md, issue 25).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    init_tracing(cli.verbose);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(cmd::run(cli));
    // The work is done (every commit landed): a client library's lingering task must not keep
    // the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_message(&err));
            ExitCode::from(
                err.downcast_ref::<vitalake::Error>()
                    .map_or(1, vitalake::Error::exit_code),
            )
        }
    }
}

/// The error and its causes, each said once. Our errors name their cause in their own message
/// (`cannot read X: No such file`), which anyhow's `{:#}` would print a second time.
fn error_message(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn init_tracing(verbose: u8) {
    // The Delta kernel logs an ERROR for every table it is asked to open before its first commit,
    // which is how new tables start here: not an error for our users. Its writer warns on every
    // commit to a table with a binary column (bronze event bodies) that it keeps no statistics
    // for it, which is what we want. It also warns on every replacing write whose key list it
    // does not use to skip files: `lake::in_list` asks for that. And it warns "table updated
    // during transaction, checking for conflicts" whenever two commits meet (a stream's landing
    // and its background compaction do, every round), then resolves them or fails the commit,
    // which is where the failure is reported.
    const DELTA_NOISE: &str = "buoyant_kernel::snapshot::builder=off,deltalake_core::writer::stats=error,deltalake_core::operations::write=error,deltalake_core::kernel::transaction=error";
    let default = match verbose {
        0 => format!("vitalake=info,warn,{DELTA_NOISE}"),
        1 => format!("vitalake=debug,info,{DELTA_NOISE}"),
        _ => "trace".to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VITALAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
