//! `corewal`: the load generator and the tools around a corewal data directory.
#![deny(unsafe_code)]

mod data_dir;
mod host;
mod load;
mod recover_bench;

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
    /// Write a data set, drop the page cache, reopen it and report recovery speed,
    /// registration latency during recovery and memory.
    RecoverBench(recover_bench::RecoverBenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => load::run(args),
        Command::RecoverBench(args) => recover_bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("corewal: error: {e}");
        std::process::exit(1);
    }
}
