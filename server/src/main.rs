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

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI API for the models of a models.toml.
    Serve(ServeArgs),
    /// Measure single-sequence prefill and decode tokens/s of a GGUF model, like
    /// `llama-bench -p 64,512 -n 64` (thread count: RAYON_NUM_THREADS, default all cores).
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// GGUF model file.
    model: PathBuf,
    /// Prompt lengths of the prefill tests, in tokens (comma-separated).
    #[arg(short = 'p', long = "prompt-tokens", value_delimiter = ',', default_values_t = [64usize, 512])]
    prompt_tokens: Vec<usize>,
    /// Tokens generated in the decode test.
    #[arg(short = 'n', long = "gen-tokens", default_value_t = 64)]
    gen_tokens: usize,
    /// Timed repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long, default_value_t = 3)]
    repetitions: usize,
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use govlm_inference::model::Model;
    let mut file = std::fs::File::open(&a.model)
        .with_context(|| format!("cannot open {}", a.model.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)
        .with_context(|| format!("{} is not a GGUF file", a.model.display()))?;
    let model = Model::load(&content, &mut file, &govlm_inference::Device::Cpu)?;
    println!(
        "model: {} ({:?})",
        a.model.display(),
        model.config().architecture
    );
    for &p in &a.prompt_tokens {
        print!(
            "{}",
            govlm_inference::bench::run_bench(&model, p, 0, a.repetitions)?
        );
    }
    if a.gen_tokens > 0 {
        print!(
            "{}",
            govlm_inference::bench::run_bench(&model, 0, a.gen_tokens, a.repetitions)?
        );
    }
    Ok(())
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
    /// Directory of the Files and Batch APIs' database and files (created if missing).
    #[arg(long, default_value = "data", env = "GOVLM_DATA_DIR")]
    data_dir: PathBuf,
    /// Directory of prompt templates (default: `prompts` if it exists). A bad template stops
    /// the server with an error naming the file.
    #[arg(long, env = "GOVLM_PROMPTS_DIR")]
    prompts_dir: Option<PathBuf>,
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
        Command::Bench(a) => bench(a),
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
                data_dir: a.data_dir,
                prompts_dir: a.prompts_dir,
            }))
        }
    }
}
