//! `tern-bot`: runs the LLM bots of a TOML file against a Tern server and
//! an OpenAI-compatible chat-completions API (docs/bots.md).

use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
};

use clap::Parser as _;
use tern_tools::bot::{config::BotsFile, runner};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// LLM bots on an OpenAI-compatible API, as Tern users (docs/bots.md).
#[derive(Debug, clap::Parser)]
#[command(name = "tern-bot", version)]
struct Args {
    /// The bots' configuration file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Check the file (and that every token source is readable) and exit.
    #[arg(long)]
    check: bool,
}

fn main() {
    let args = Args::parse();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tern-bot: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(args: &Args) -> anyhow::Result<()> {
    let file = BotsFile::load(&args.config)?;
    if args.check {
        for b in &file.bots {
            b.token_source()?.token()?;
        }
        let api = file.api_target();
        println!(
            "ok: {} bot(s), API {} ({})",
            file.bots.len(),
            api.base_url,
            if api.api_key.is_some() {
                "with a key"
            } else {
                "no key"
            }
        );
        return Ok(());
    }
    runner::run(&file, Arc::new(AtomicBool::new(false)))
}
