//! The `paygate` binary.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::process::ExitCode;

/// glibc's malloc spent 12% of a query's CPU in `_int_malloc` under load (perf);
/// mimalloc's per-thread heaps suit many small, short-lived allocations across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use paygate::cli::{self, Cli, Command};
use paygate::config::{Config, Overrides};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen, data_dir, production, accept_data_loss } => {
            serve(&config, Overrides { listen, data_dir }, production, accept_data_loss)
        }
        Command::Journal(args) => cli::journal(args),
        Command::Secret(args) => cli::secret(args),
        Command::Risk(args) => cli::risk(args),
        Command::Sim { config, listen, data_dir, tls } => cli::sim(&config, &listen, &data_dir, tls),
        Command::Client(args) => cli::client(args),
        Command::Sandbox(args) => cli::sandbox(args),
        Command::Receiver { listen, secret, merchant_id, config } => {
            cli::receiver(&listen, secret, &merchant_id, &config)
        }
        Command::Bench(args) => cli::bench(args),
        Command::BenchBaseline { listen, workers, journal_dir, auth_config, pay } => {
            paygate::load::baseline::serve(&listen, workers, journal_dir.as_deref(), auth_config.as_deref(), pay)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paygate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(dir: &std::path::Path, overrides: Overrides, production: bool, accept_data_loss: bool) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colour only for a person at a terminal, never into files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_timer(ApiTime)
        .init();
    let mut config = Config::load(dir, &overrides).map_err(|e| e.to_string())?;
    config.storage.accept_data_loss = accept_data_loss;
    if let Some(refusal) = config.production_refusal().filter(|_| production) {
        return Err(format!("--production: {refusal}"));
    }
    if config.demo_master_key {
        tracing::warn!("secrets are sealed with the PUBLIC demo master key: for local trials only");
    }
    let node = paygate::node::start(config).map_err(|e| e.to_string())?;
    let url = &node.public_url;
    let mut addresses = format!(
        "paygate listening on http://{}\n  merchant API       {url}/api/v1/…  (OpenAPI: {url}/openapi.json)\n  \
         hosted cashier     {url}/h5/<pay_order_no>\n  metrics            {url}/metrics\n",
        node.addr
    );
    if let Some(sim) = &node.sim {
        addresses.push_str(&format!(
            "  channel simulator  {}  (buyers pay there; control: /sim/alipay|wechat|unionpay/…)\n",
            sim.base_url
        ));
    }
    paygate::cli::out(addresses.as_bytes())?;
    wait_for_signal()?;
    eprintln!("paygate: stopping: no new connections, finishing requests in flight");
    node.drain_and_stop(DRAIN);
    Ok(())
}

/// Log lines carry their time as the API writes times: RFC 3339, UTC, milliseconds.
struct ApiTime;

impl tracing_subscriber::fmt::time::FormatTime for ApiTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        use paygate_actors::clock::Clock;
        write!(w, "{}", paygate::time_fmt::Rfc3339(paygate_actors::clock::SystemClock.now_ms()))
    }
}

/// How long a stopping node lets the requests in flight finish.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok(())
    })
}
