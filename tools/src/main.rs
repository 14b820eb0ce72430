//! `corewal`: the load generator and the tools around a corewal data directory.
#![deny(unsafe_code)]

mod host;
mod load;

use clap::{Parser, Subcommand};

/// corewal's bundled tools.
#[derive(Parser)]
#[command(
    name = "corewal",
    version,
    about = "Load generator and tools for corewal data directories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive appends against an engine and report throughput, latency and CPU.
    Load(load::LoadArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => load::run(args),
    };
    if let Err(e) = result {
        eprintln!("corewal: error: {e}");
        std::process::exit(1);
    }
}
