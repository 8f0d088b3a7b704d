//! `govlm-eval`: evaluation suites and a load-test tool for any OpenAI-compatible endpoint
//! (govlm, llama.cpp's `llama-server`, vLLM).
//!
//! - `govlm-eval load`: load test (TTFT, ITL, TPOT, E2E, throughput, goodput, errors).
//! - `govlm-eval compare-load A.json B.json`: two load reports side by side.
//! - `govlm-eval quality`: quality suites defined as data.

mod load;
pub mod quality;
pub mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "govlm-eval",
    version,
    about = "Evaluate an OpenAI-compatible LLM endpoint"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load test: fixed concurrency (sweep) or arrival rate; writes load.json/.md/.png.
    Load(Box<load::LoadArgs>),
    /// Compare two load.json reports side by side (ratios B/A).
    CompareLoad(load::compare::CompareArgs),
    /// Quality suites (tasks defined as TOML + JSONL).
    Quality(quality::QualityArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("govlm-eval: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Load(a) => load::run(*a).await,
            Command::CompareLoad(a) => load::compare::run(a),
            Command::Quality(a) => quality::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("govlm-eval: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
