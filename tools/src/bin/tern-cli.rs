//! `tern-cli`: chat on a Tern server from a terminal (no command, or
//! `chat`) or from a script (`send`, `history`, `sync`, `convs`, `friend`,
//! `group`, …). See docs/cli.md.

use clap::Parser as _;
use tern_tools::cli::{
    args::{Cli, Command},
    repl, script,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        None | Some(Command::Chat) => repl::main(&cli),
        Some(_) => script::main(&cli),
    };
    std::process::exit(code);
}
