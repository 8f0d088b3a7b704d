//! The `govlm` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use govlm_server::{serve, ServerConfig, DEFAULT_MAX_BODY_BYTES};

/// govlm: an on-premise OpenAI-compatible LLM inference server.
#[derive(Debug, Parser)]
#[command(name = "govlm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Subcommands (more are added here: `models install`, `bench`).
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI API for the models of a models.toml.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Path of models.toml.
    #[arg(long, default_value = "models.toml", env = "GOVLM_CONFIG")]
    config: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "GOVLM_HOST")]
    host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080, env = "GOVLM_PORT")]
    port: u16,
    /// Serve only this model id of the config.
    #[arg(long)]
    model: Option<String>,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Serve(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(ServerConfig {
                models_toml: a.config,
                host: a.host,
                port: a.port,
                only_model: a.model,
                max_body_bytes: a.max_body_bytes,
            }))
        }
    }
}
