//! `tern-load`: the c1m load harness (see docs/load.md).
//!
//! `tern-load SCENARIO --target ADDR[,ADDR…] --jwt-secret S [--json]`; the
//! hidden `__worker` mode is how the parent runs its worker processes.
//! Exit codes: 0 done, 1 `--verify` found problems, 2 refused or failed.

use std::{io::Write as _, process::ExitCode};

use clap::{Parser, Subcommand};
use tern_tools::load::{
    report,
    run::{self, LoadArgs},
    spec::Scenario,
    worker,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "tern-load", version, about = "Tern's c1m load harness")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Open --conns authenticated connections at --ramp/s and hold them --hold s.
    Idle(LoadArgs),
    /// --pairs pairs send 1:1 messages at --rate/s for --duration s.
    Chat(LoadArgs),
    /// --groups groups of --group-size; --group-senders members send at --rate/s.
    Group(LoadArgs),
    /// Idle, then drop --fraction at once and reconnect (--jitter-ms 0 or N).
    Storm(LoadArgs),
    /// Idle connections, chatting pairs and groups at once.
    Mixed(LoadArgs),
    /// --groups rooms of --group-size connections; --group-senders of each
    /// post at --rate/s, the others join and receive (nobody is a stored member).
    Room(LoadArgs),
    /// Internal: a worker process (spec and commands on stdin, JSON lines out).
    #[command(name = "__worker", hide = true)]
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (scenario, args) = match cli.command {
        Cmd::Worker => {
            let stdin = std::io::BufReader::new(std::io::stdin());
            let stdout = std::io::stdout().lock();
            return match worker::main(stdin, stdout) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Not `println!`: when the parent has gone (the usual
                    // cause of the error: its end of the pipe closed), that
                    // would panic on the broken pipe.
                    let msg = serde_json::json!({"kind": "fatal", "error": e.to_string()});
                    let _ = writeln!(std::io::stdout(), "{msg}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Idle(a) => (Scenario::Idle, a),
        Cmd::Chat(a) => (Scenario::Chat, a),
        Cmd::Group(a) => (Scenario::Group, a),
        Cmd::Storm(a) => (Scenario::Storm, a),
        Cmd::Mixed(a) => (Scenario::Mixed, a),
        Cmd::Room(a) => (Scenario::Room, a),
    };
    match run::run(scenario, &args) {
        Ok(r) => {
            let mut out = std::io::stdout().lock();
            if args.json {
                let _ = writeln!(out, "{}", report::to_json(&r));
            } else {
                let _ = write!(out, "{}", report::human(&r));
            }
            if r.verify.as_ref().is_some_and(|v| !v.clean()) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("tern-load: {e:#}");
            ExitCode::from(2)
        }
    }
}
